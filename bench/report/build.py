"""``bench report``: tables, plots and overlays of a study, as Markdown, self-contained HTML,
CSV and LaTeX (booktabs), all built from the runs in MLflow.

The document is a list of typed blocks (:mod:`bench.report.blocks`), one list per section,
rendered by one renderer per format, so the Markdown and the HTML always say the same thing. A
figure that cannot be drawn (artifacts deleted from the store) is left out, with a warning in
the report and on stderr.
"""

from __future__ import annotations

import math
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from .blocks import Alert, Block, Bullets, Figure, Heading, Paragraph, Table, render_html, render_markdown, write_tables
from .power import clause
from .protocol_card import protocol_card, protocol_sentence
from .runs import METRIC_LABELS, ReportError, finished, load_runs, metric_histories, per_class_iou, status_table
from .search_sections import (
    SearchInfo,
    Section,
    confirmation_section,
    is_staged,
    search_only_study,
    search_section,
    stage_runs,
)
from .statistics import CI_NAMES, T_INTERVAL_BELOW, summary

BASELINE = "vit-pcm"


def pct(x: float, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def pvalue(p: float) -> str:
    return "–" if p is None or math.isnan(p) else (f"{p:.2g}" if p >= 1e-4 else "< 1e-4")


def main_table(s: pd.DataFrame, status: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Display table: mean ± std per metric, seeds, Δ to the baseline with its CI, p; and the
    bold mask (the best mean of each metric)."""
    out = pd.DataFrame(index=s.index.copy())  # a copy: naming it must not rename the summary's index
    bold = pd.DataFrame(False, index=s.index.copy(), columns=[])
    out["seeds"] = [
        f"{n}/{status.loc[g, 'expected']}" if g in status.index else str(n) for g, n in zip(s.index, s["n"])
    ]
    bold["seeds"] = False
    for m in s.attrs["metrics"]:
        means = s[f"{m}_mean"]
        out[METRIC_LABELS[m]] = [f"{pct(mu)} ± {pct(sd)}" for mu, sd in zip(means, s[f"{m}_std"])]
        bold[METRIC_LABELS[m]] = (means == means.max()).to_numpy()
        if f"{m}_diff" in s:
            diffs = s[f"{m}_diff"].fillna(np.nan)
            out[f"Δ {METRIC_LABELS[m]}"] = [
                "" if math.isnan(d) else f"{100 * d:+.1f} [{pct(lo)}, {pct(hi)}]"
                for d, lo, hi in zip(diffs, s[f"{m}_ci_low"], s[f"{m}_ci_high"])
            ]
            out[f"p ({METRIC_LABELS[m]})"] = ["" if math.isnan(d) else pvalue(p) for d, p in zip(diffs, s[f"{m}_p"])]
            bold[f"Δ {METRIC_LABELS[m]}"] = bold[f"p ({METRIC_LABELS[m]})"] = False
    out.index.name = "variant"
    return out, bold[out.columns]


def claims(s: pd.DataFrame, baseline: str | None) -> list[str]:
    """One sentence per variant and metric that differs from the baseline: checkable results,
    each with what its seeds can detect and how many seeds the observed difference needs."""
    out = []
    for group, row in s.iterrows():
        for m in s.attrs["metrics"]:
            d = row.get(f"{m}_diff")
            if d is None or (isinstance(d, float) and math.isnan(d)):
                continue
            pv = pvalue(row[f"{m}_p"])
            pv = pv if pv.startswith("<") else f"= {pv}"
            kind = CI_NAMES.get(row.get(f"{m}_ci_kind"), "CI")
            ci = (
                ""
                if math.isnan(row[f"{m}_ci_low"])
                else f", 95% {kind} [{100 * row[f'{m}_ci_low']:+.1f}, {100 * row[f'{m}_ci_high']:+.1f}]"
            )
            n = int(row[f"{m}_pairs"])
            out.append(
                f"{group} vs {baseline}: {METRIC_LABELS[m]} {100 * d:+.1f} points{ci}; paired t-test over "
                f"{n} seeds, p {pv}. Power: {clause(n, d, row.get(f'{m}_diff_sd', float('nan')))}."
            )
    return out


def load_examples(client, run_id: str) -> list[dict[str, np.ndarray]] | None:
    """The held-out examples a trial logged (``examples.npz``), or None when the artifact is
    gone or unreadable (artifact store deleted or moved)."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            data = np.load(client.download_artifacts(run_id, "examples.npz", tmp))
            items: dict[int, dict[str, np.ndarray]] = {}
            for key in data.files:
                name, idx = key.rsplit("_", 1)
                items.setdefault(int(idx), {})[name] = data[key]
        except (MlflowException, OSError, ValueError, zipfile.BadZipFile):
            return None
    return [items[i] for i in sorted(items)] or None


def _warn(msg: str) -> Alert:
    print(f"bench: warning: {msg}", file=sys.stderr)
    return Alert(msg)


def _main_section(df, s, status, base, study_name: str, pdir: Path, title: str = "Main results") -> list[Block]:
    blocks: list[Block] = [Heading(title)]
    frame, bold = main_table(s, status)
    blocks.append(Table(frame, f"{study_name}: mIoU (%), mean ± std over seeds", name="main", data=s, bold=bold))
    blocks.append(Table(status, "Trial runs per group and state", name="status", show=False))
    if base:
        blocks.append(
            Paragraph(
                f"Δ: paired difference to {base} over shared seeds, in points, with a 95% CI: the paired "
                f"t-interval below {T_INTERVAL_BELOW} seed pairs (it agrees with the t-test), the percentile "
                f"bootstrap (scipy.stats.bootstrap) from {T_INTERVAL_BELOW} on; each claim below names the one "
                "shown. p: two-sided paired t-test (scipy.stats.ttest_rel). Power: of that test at α = 0.05, "
                "from the spread of the paired differences (the noncentral t): the smallest difference "
                "the study's seeds detect 80% of the time, and the seeds the observed difference needs."
            )
        )
        if items := claims(s, base):
            blocks.append(Bullets(tuple(items)))
    blocks.append(
        Figure(
            plots.variants_plot(df, s.attrs["metrics"], pdir / "variants.png"), "Each dot a seed; diamonds: mean ± std."
        )
    )
    return blocks


def _ablation_sections(df, metrics, pdir: Path) -> list[Block]:
    blocks: list[Block] = []
    for axis in df.attrs["grid_axes"]:
        p = plots.ablation_plot(df, axis, metrics, pdir / f"ablation_{axis.replace('.', '_')}.png")
        blocks += [Heading(f"Ablation: {axis}"), Figure(p, f"mIoU against {axis}; band: ± 1 std over seeds.")]
    return blocks


def _per_class_section(df, crf: bool, pdir: Path) -> list[Block]:
    pc = per_class_iou(df, crf)
    title = "Per-class IoU (%), pseudo labels" + (" with CRF" if crf else "")
    return [
        Heading("Per-class IoU"),
        Table((pc * 100).round(1), "Per-class IoU (%)", name="per_class_iou", data=pc, show=False),
        Figure(plots.per_class_heatmap(pc, pdir / "per_class_iou.png", title), title),
    ]


def _curves_section(df, uri: str, pdir: Path) -> list[Block]:
    hist = metric_histories(uri, df)
    if hist.empty:
        return []
    return [
        Heading("Training curves"),
        Figure(
            plots.training_curves(hist, pdir / "training_curves.png"),
            "Held-out pseudo mIoU (no CRF) and loss per epoch; band: ± 1 std over seeds.",
        ),
    ]


def _overlay_section(df, uri: str, crf: bool, pdir: Path) -> list[Block]:
    """The lowest seed of each group (at most 6 groups) whose examples can be read; groups with
    none are left out of the figure, and the report says so."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    f = finished(df).sort_values("seed")
    groups = list(pd.unique(f["group"]))[:6]
    panels: dict[str, list] = {}
    missing: dict[str, list[str]] = {}  # group -> seeds whose examples are gone
    for g in groups:
        runs = f[f["group"] == g]
        for _, r in runs.iterrows():
            if (examples := load_examples(client, r["run_id"])) is not None:
                panels[g] = examples
                break
            missing.setdefault(g, []).append(str(r["seed"]))
    blocks: list[Block] = [Heading("Pseudo labels side by side")]
    if missing:
        left_out = [g for g in groups if g not in panels]
        if not panels:
            what = "the figure is left out"
        elif left_out:
            what = f"the figure leaves out {', '.join(left_out)}"
        else:
            what = "the figure shows the next seed of those groups"
        runs = "; ".join(f"{g} seed{'s' * (len(v) > 1)} {', '.join(v)}" for g, v in missing.items())
        blocks.append(
            _warn(f"Missing artifacts: examples.npz could not be read from the artifact store for {runs}; {what}.")
        )
    if panels:
        p = plots.overlay_figure(panels, pdir / "overlays.png", crf)
        blocks.append(
            Figure(
                p,
                "The same images of the pseudo-label split (train), ground truth and each variant's pseudo labels (lowest seed).",
            )
        )
    return blocks


def build(
    study_name: str,
    uri: str,
    out: Path,
    expected_seeds: int | None = None,
    baseline: str = BASELINE,
    optuna_study=None,
    search: SearchInfo | None = None,
) -> Path:
    """Write the report of ``study_name`` under ``out``; returns the path of report.md. A search
    study whose runs carry a stage tag gets a Search section (tune-split values) and a
    Confirmation section, and its main table is built from the confirmation runs only."""
    runs = load_runs(uri, study_name)
    if finished(runs).empty:
        raise ReportError(
            f"study {study_name!r} has no finished trial yet ({len(runs)} runs: {', '.join(sorted(set(runs['state'])))})"
        )
    pdir = out / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    blocks: list[Block] = [Heading(f"Study report: {study_name}", 1)]
    df, staged = runs, is_staged(runs)
    if staged:
        search = search or SearchInfo.from_runs(runs, optuna_study, baseline)
        search.baseline = baseline
        blocks += _staged_sections(runs, optuna_study, search, pdir)
        df = stage_runs(runs, "confirm")
        if finished(df).empty:
            blocks.append(
                Paragraph(
                    "No confirmation run (no confirm: block, or none finished yet): nothing here is scored on the report split."
                )
            )
            return _write(blocks, out, study_name)
    base = baseline if baseline in set(df["variant"]) else None
    status = status_table(df, expected_seeds)
    s = summary(df, base)
    crf = "pseudo_miou_crf" in s.attrs["metrics"]
    blocks += _incomplete_alert(status)
    blocks.append(
        Paragraph(
            f"{len(finished(df))} finished trial runs of {len(df)} read from MLflow ({uri}). "
            "Values are mIoU in %, mean ± sample std over seeds."
        )
    )
    blocks += _protocol_section(df, base)
    title = "Main results (confirmation runs, report split)" if staged else "Main results"
    blocks += _main_section(df, s, status, base, study_name, pdir, title)
    blocks += _ablation_sections(df, s.attrs["metrics"], pdir)
    blocks += _per_class_section(df, crf, pdir)
    blocks += _curves_section(df, uri, pdir)
    blocks += _overlay_section(df, uri, crf, pdir)
    return _write(blocks, out, study_name)


def _incomplete_alert(status: pd.DataFrame) -> list[Block]:
    """An alert naming each group with missing seeds or failed, pruned or running trials."""
    incomplete = status[
        (status["seeds"] < status["expected"])
        | (status.drop(columns=["FINISHED", "seeds", "expected"]).sum(axis=1) > 0)
    ]
    if not len(incomplete):
        return []
    rows = "; ".join(
        f"{g}: {int(r['seeds'])}/{int(r['expected'])} seeds finished"
        + "".join(f", {int(r[c])} {c.lower()}" for c in ("FAILED", "PRUNED", "RUNNING") if c in r and r[c])
        for g, r in incomplete.iterrows()
    )
    return [Alert(f"Incomplete study: means are over the finished seeds only ({rows}).")]


def _write(blocks: list[Block], out: Path, study_name: str) -> Path:
    write_tables(blocks, out / "tables", study_name)
    (out / "report.md").write_text(render_markdown(blocks, out))
    (out / "report.html").write_text(render_html(blocks, study_name))
    return out / "report.md"


def _section_blocks(section: Section) -> list[Block]:
    """A section of :mod:`bench.report.search_sections` as typed blocks (its tables saved under tables/)."""
    out: list[Block] = [Heading(section.title)]
    for b in section.blocks:
        out.append(Paragraph(b) if isinstance(b, str) else Table(b.display, b.caption, name=b.name, data=b.data))
    return out


def _staged_sections(runs: pd.DataFrame, optuna_study, search: SearchInfo, pdir: Path) -> list[Block]:
    """Search (best trials, history and importances: search trials only, tune-split values) and
    Confirmation (protocol and optimism gap) of a search study."""
    blocks: list[Block] = []
    if optuna_study is not None:
        blocks += _section_blocks(search_section(runs, optuna_study, search))
        figures = plots.optuna_plots(search_only_study(optuna_study), pdir)
        blocks += [Figure(p, f"{p.stem.replace('_', ' ')} (search trials, {search.split})") for p in figures]
        blocks += _section_blocks(confirmation_section(runs, optuna_study, search))
    else:
        blocks.append(Alert("The Optuna study was not found (pass --storage): no Search section and no optimism gap."))
    return blocks


def _protocol_section(df: pd.DataFrame, baseline: str | None) -> list[Block]:
    """The "Protocol" section (:mod:`bench.report.protocol_card`): the card of the runs' resolved
    configurations beside ViT-PCM's published protocol; also tables/protocol.csv and .tex."""
    card = protocol_card(df)
    text = (
        protocol_sentence(card, baseline) + " Values are the runs' resolved configurations; "
        "'differs' names the variants that depart from the published value."
    )
    return [
        Heading("Protocol"),
        Paragraph(text),
        Table(card, "Protocol: this study vs ViT-PCM's published one", name="protocol"),
    ]


def power_advice(uri: str, study_name: str, baseline: str) -> list[str]:
    """The claims (with their power clauses) of a study that already has finished runs; [] when
    it has none (for ``bench run --dry-run``)."""
    try:
        runs = load_runs(uri, study_name)
    except ReportError:
        return []
    df = stage_runs(runs, "confirm") if is_staged(runs) else runs
    if finished(df).empty or baseline not in set(df["variant"]):
        return []
    return claims(summary(df, baseline), baseline)
