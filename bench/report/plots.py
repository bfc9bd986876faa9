"""The report's figures (seaborn / matplotlib, Agg backend): each function writes one PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .overlay import blend  # noqa: E402
from .runs import METRIC_LABELS, finished  # noqa: E402

sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
DPI = 150


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def variants_plot(df: pd.DataFrame, metrics: list[str], path: Path) -> Path:
    """Each metric per group: one dot a seed, the mean and +- 1 std."""
    f = finished(df)
    long = f.melt(
        id_vars=["group", "seed"], value_vars=[f"metrics.{m}" for m in metrics], var_name="metric", value_name="mIoU"
    )
    long["metric"] = long["metric"].str.removeprefix("metrics.").map(METRIC_LABELS)
    long["mIoU"] *= 100
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * f["group"].nunique() * len(metrics) ** 0.5, 3.6))
    dodge = len(metrics) > 1  # seaborn divides by (hue levels - 1)
    sns.pointplot(
        long,
        x="group",
        y="mIoU",
        hue="metric",
        errorbar="sd",
        dodge=0.4 if dodge else False,
        linestyle="none",
        capsize=0.1,
        markers="D",
        ax=ax,
    )
    sns.stripplot(long, x="group", y="mIoU", hue="metric", dodge=dodge, alpha=0.45, legend=False, ax=ax, size=4)
    ax.set(xlabel="", ylabel="mIoU (%)", title="Pseudo-label quality per variant (mean ± std over seeds)")
    ax.tick_params(axis="x", rotation=20)
    return _save(fig, path)


def ablation_plot(df: pd.DataFrame, axis: str, metrics: list[str], path: Path) -> Path:
    """Metric against one grid axis, a line per variant, +- 1 std band over seeds."""
    f = finished(df).copy()
    f["x"] = pd.to_numeric(f[f"grid.{axis}"], errors="coerce")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        d = f.assign(y=f[f"metrics.{m}"] * 100)
        sns.lineplot(d, x="x", y="y", hue="variant", errorbar="sd", marker="o", ax=ax)
        ax.set(xlabel=axis, ylabel=f"{METRIC_LABELS[m]} (%)")
        if d["x"].min() > 0 and d["x"].max() / d["x"].min() > 20:
            ax.set_xscale("log")
    fig.suptitle(f"Ablation: {axis}")
    return _save(fig, path)


def per_class_heatmap(table: pd.DataFrame, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * table.shape[1], 0.9 + 0.45 * table.shape[0]))
    sns.heatmap(
        table * 100, annot=True, fmt=".1f", cmap="viridis", vmin=0, vmax=100, cbar_kws={"label": "IoU (%)"}, ax=ax
    )
    ax.set(xlabel="", ylabel="", title=title)
    ax.tick_params(axis="x", rotation=35)
    ax.tick_params(axis="y", rotation=0)
    return _save(fig, path)


def training_curves(hist: pd.DataFrame, path: Path) -> Path:
    """Held-out pseudo mIoU and training loss per epoch, mean +- std over seeds per group."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, (key, label) in zip(axes, [("monitor_pseudo_miou", "held-out pseudo mIoU"), ("loss", "training loss")]):
        d = hist[hist["key"] == key]
        if not d.empty:
            sns.lineplot(d, x="step", y="value", hue="group", errorbar="sd", ax=ax)
        ax.set(xlabel="epoch", ylabel=label)
    return _save(fig, path)


def overlay_figure(panels: dict[str, list[dict[str, np.ndarray]]], path: Path, crf: bool) -> Path:
    """Rows = images of the pseudo-label split; columns = image, ground truth, each variant's pseudo labels."""
    names = list(panels)
    first = panels[names[0]]
    n_rows = len(first)
    cols = ["image", "ground truth", *names]
    fig, axes = plt.subplots(n_rows, len(cols), figsize=(1.7 * len(cols), 1.7 * n_rows), squeeze=False)
    key = "pseudo_crf" if crf else "pseudo"
    for i in range(n_rows):
        img, mask = first[i]["image"], first[i]["mask"]
        row = [img, blend(img, mask)] + [blend(img, panels[n][i].get(key, panels[n][i]["pseudo"])) for n in names]
        for j, panel in enumerate(row):
            ax = axes[i][j]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=9)
    fig.suptitle("Pseudo labels" + (" (with CRF)" if crf else ""), fontsize=10)
    return _save(fig, path)


def optuna_plots(study, out: Path) -> list[Path]:
    """Optimisation history and parameter importances of a search study."""
    import warnings

    import optuna
    from optuna.visualization import matplotlib as ovm

    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = ovm.plot_optimization_history(study)
        written.append(_save(ax.figure, out / "optuna_history.png"))
        complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        if len(complete) >= 2 and len(complete[0].params) >= 1:
            ax = ovm.plot_param_importances(study)
            written.append(_save(ax.figure, out / "optuna_importances.png"))
    return written
