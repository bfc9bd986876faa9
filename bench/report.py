"""``bench report``: tables, plots and overlays of a study, as Markdown, self-contained HTML,
CSV and LaTeX (booktabs), all built from the runs in MLflow.

The document is a list of blocks (heading, paragraph, table, image) rendered twice, so the
Markdown and the HTML always say the same thing.
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from . import report_plots as plots
from .report_data import (
    CI_NAMES, METRIC_LABELS, T_INTERVAL_BELOW, ReportError, finished, load_runs, metric_histories, per_class_iou, status_table, summary,
)  # fmt: skip

BASELINE = "vit-pcm"


def pct(x: float, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def pvalue(p: float) -> str:
    return "–" if p is None or math.isnan(p) else (f"{p:.2g}" if p >= 1e-4 else "< 1e-4")


def main_table(s: pd.DataFrame, status: pd.DataFrame, baseline: str | None, style: str) -> pd.DataFrame:
    """Display table: mean ± std per metric (best in bold), seeds, Δ to the baseline, CI, p.
    ``style``: ``md``, ``html`` or ``tex`` (how bold and ± are written)."""
    bold = {"md": "**{}**", "html": "<b>{}</b>", "tex": r"\textbf{{{}}}"}[style]
    pm = r" $\pm$ " if style == "tex" else " ± "
    out = pd.DataFrame(index=s.index)
    out["seeds"] = [f"{n}/{status.loc[g, 'expected']}" if g in status.index else str(n) for g, n in zip(s.index, s["n"])]
    for m in s.attrs["metrics"]:
        means = s[f"{m}_mean"]
        best = means.max()
        out[METRIC_LABELS[m]] = [
            (bold.format(cell) if mu == best else cell)
            for mu, cell in zip(means, (f"{pct(mu)}{pm}{pct(sd)}" for mu, sd in zip(means, s[f"{m}_std"])))
        ]
        if f"{m}_diff" in s:
            out[f"Δ {METRIC_LABELS[m]}"] = [
                "" if math.isnan(d) else f"{100 * d:+.1f} [{pct(lo)}, {pct(hi)}]"
                for d, lo, hi in zip(s[f"{m}_diff"].fillna(np.nan), s[f"{m}_ci_low"], s[f"{m}_ci_high"])
            ]
            out[f"p ({METRIC_LABELS[m]})"] = ["" if math.isnan(d) else pvalue(p) for d, p in zip(s[f"{m}_diff"].fillna(np.nan), s[f"{m}_p"])]
    out.index.name = "variant"
    return out


def claims(s: pd.DataFrame, baseline: str | None) -> list[str]:
    """One sentence per variant and metric that differs from the baseline: checkable results."""
    out = []
    for group, row in s.iterrows():
        for m in s.attrs["metrics"]:
            d = row.get(f"{m}_diff")
            if d is None or (isinstance(d, float) and math.isnan(d)):
                continue
            pv = pvalue(row[f"{m}_p"])
            pv = pv if pv.startswith("<") else f"= {pv}"
            kind = CI_NAMES.get(row.get(f"{m}_ci_kind"), "CI")
            ci = "" if math.isnan(row[f"{m}_ci_low"]) else f", 95% {kind} [{100 * row[f'{m}_ci_low']:+.1f}, {100 * row[f'{m}_ci_high']:+.1f}]"
            out.append(
                f"{group} vs {baseline}: {METRIC_LABELS[m]} {100 * d:+.1f} points{ci}; paired t-test over "
                f"{int(row[f'{m}_pairs'])} seeds, p {pv}."
            )
    return out


def latex(table: pd.DataFrame, caption: str, label: str) -> str:
    """Booktabs LaTeX through pandas' Styler; cell text already carries its markup."""
    t = table.copy()
    t.index = [str(i).replace("_", r"\_") for i in t.index]
    t.columns = [str(c).replace("_", r"\_").replace("Δ", r"$\Delta$") for c in t.columns]
    return t.style.to_latex(hrules=True, caption=caption, label=label, column_format="l" + "r" * t.shape[1])


def load_examples(client, run_id: str) -> list[dict[str, np.ndarray]]:
    """The held-out examples a trial logged (``examples.npz``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, "examples.npz", tmp)
        data = np.load(path)
        items: dict[int, dict[str, np.ndarray]] = {}
        for key in data.files:
            name, idx = key.rsplit("_", 1)
            items.setdefault(int(idx), {})[name] = data[key]
    return [items[i] for i in sorted(items)]


def build(
    study_name: str, uri: str, out: Path, expected_seeds: int | None = None, baseline: str = BASELINE,
    optuna_study=None,
) -> Path:  # fmt: skip
    """Write the report of ``study_name`` under ``out``; returns the path of report.md."""
    from mlflow import MlflowClient

    df = load_runs(uri, study_name)
    if finished(df).empty:
        raise ReportError(f"study {study_name!r} has no finished trial yet ({len(df)} runs: {', '.join(sorted(set(df['state'])))})")
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    base = baseline if baseline in set(df["variant"]) else None
    status = status_table(df, expected_seeds)
    s = summary(df, base)
    metrics = s.attrs["metrics"]
    blocks: list[tuple] = [("h1", f"Study report: {study_name}")]
    incomplete = status[(status["seeds"] < status["expected"]) | (status.drop(columns=["FINISHED", "seeds", "expected"]).sum(axis=1) > 0)]
    if len(incomplete):
        rows = "; ".join(f"{g}: {int(r['seeds'])}/{int(r['expected'])} seeds finished"
                         + "".join(f", {int(r[c])} {c.lower()}" for c in ("FAILED", "PRUNED", "RUNNING") if c in r and r[c])
                         for g, r in incomplete.iterrows())  # fmt: skip
        blocks.append(("warn", f"Incomplete study: means are over the finished seeds only ({rows})."))
    blocks.append(("p", f"{len(finished(df))} finished trial runs of {len(df)} read from MLflow ({uri}). "
                        "Values are mIoU in %, mean ± sample std over seeds."))  # fmt: skip
    # main table
    s.reset_index().to_csv(out / "tables" / "main.csv", index=False)
    status.to_csv(out / "tables" / "status.csv")
    (out / "tables" / "main.tex").write_text(latex(main_table(s, status, base, "tex"), f"{study_name}: pseudo-label mIoU (\\%)", f"tab:{study_name}"))
    blocks += [("h2", "Main results"), ("table", main_table(s, status, base, "md"), main_table(s, status, base, "html"))]
    if base:
        blocks.append(("p", f"Δ: paired difference to {base} over shared seeds, in points, with a 95% CI: the paired "
                            f"t-interval below {T_INTERVAL_BELOW} seed pairs (it agrees with the t-test), the percentile "
                            f"bootstrap (scipy.stats.bootstrap) from {T_INTERVAL_BELOW} on; each claim below names the one "
                            "shown. p: two-sided paired t-test (scipy.stats.ttest_rel)."))  # fmt: skip
        for c in claims(s, base):
            blocks.append(("li", c))
    blocks.append(("img", plots.variants_plot(df, metrics, out / "plots" / "variants.png"), "Each dot a seed; diamonds: mean ± std."))
    # ablations
    for axis in df.attrs["grid_axes"]:
        name = axis.replace(".", "_")
        p = plots.ablation_plot(df, axis, metrics, out / "plots" / f"ablation_{name}.png")
        blocks += [("h2", f"Ablation: {axis}"), ("img", p, f"mIoU against {axis}; band: ± 1 std over seeds.")]
    # per class
    crf = "pseudo_miou_crf" in metrics
    pc = per_class_iou(df, crf)
    pc.to_csv(out / "tables" / "per_class_iou.csv")
    (out / "tables" / "per_class_iou.tex").write_text(latex((pc * 100).round(1), "Per-class IoU (\\%)", f"tab:{study_name}-classes"))
    title = "Per-class IoU (%), pseudo labels" + (" with CRF" if crf else "")
    blocks += [("h2", "Per-class IoU"), ("img", plots.per_class_heatmap(pc, out / "plots" / "per_class_iou.png", title), title)]
    # training curves
    hist = metric_histories(uri, df)
    if not hist.empty:
        blocks += [("h2", "Training curves"), ("img", plots.training_curves(hist, out / "plots" / "training_curves.png"),
                                              "Held-out pseudo mIoU (no CRF) and loss per epoch; band: ± 1 std over seeds.")]  # fmt: skip
    # overlays: the lowest seed of each group (at most 6 groups)
    client = MlflowClient(uri)
    f = finished(df).sort_values("seed")
    panels = {g: load_examples(client, f[f["group"] == g].iloc[0]["run_id"]) for g in list(pd.unique(f["group"]))[:6]}
    if panels:
        p = plots.overlay_figure(panels, out / "plots" / "overlays.png", crf)
        blocks += [("h2", "Pseudo labels side by side"), ("img", p, "The same images of the pseudo-label split (train), ground truth and each variant's pseudo labels (lowest seed).")]
    # search
    if optuna_study is not None:
        import optuna

        done = optuna_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        if done:
            best = sorted(done, key=lambda t: t.value, reverse=optuna_study.direction.name == "MAXIMIZE")[:10]
            bt = pd.DataFrame([{"trial": t.number, "value": round(t.value, 4), **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in t.params.items()}} for t in best]).set_index("trial")
            bt.to_csv(out / "tables" / "best_trials.csv")
            (out / "tables" / "best_trials.tex").write_text(latex(bt, "Best search trials", f"tab:{study_name}-best"))
            blocks += [("h2", "Search"), ("p", "Best trials (objective value and parameters):"), ("table", bt, bt)]
            for p in plots.optuna_plots(optuna_study, out / "plots"):
                blocks.append(("img", p, p.stem.replace("_", " ")))
    md = render_md(blocks, out)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(render_html(blocks, study_name))
    return out / "report.md"


def render_md(blocks: list[tuple], out: Path) -> str:
    parts = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            parts.append(f"# {b[1]}")
        elif kind == "h2":
            parts.append(f"## {b[1]}")
        elif kind == "p":
            parts.append(b[1])
        elif kind == "warn":
            parts.append(f"> **Warning:** {b[1]}")
        elif kind == "li":
            parts.append(f"- {b[1]}")
        elif kind == "table":
            parts.append(b[1].to_markdown())
        elif kind == "img":
            parts.append(f"![{b[2]}]({b[1].relative_to(out).as_posix()})\n\n*{b[2]}*")
    return "\n\n".join(parts) + "\n"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{border-bottom:2px solid #444}
img{max-width:100%}figure{margin:1em 0}figcaption{color:#555;font-size:90%}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:.6em 1em}"""
# a browser test reads data-images-loaded after load: every <img> decoded with a size
ONLOAD = ("<script>window.addEventListener('load',()=>{const ok=[...document.images].every(i=>i.complete&&i.naturalWidth>0);"
          "document.body.dataset.imagesLoaded=String(ok);document.body.dataset.images=document.images.length;});</script>")  # fmt: skip


def render_html(blocks: list[tuple], title: str) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style>{ONLOAD}</head><body>"]
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            parts.append(f"<h1>{html.escape(b[1])}</h1>")
        elif kind == "h2":
            parts.append(f"<h2>{html.escape(b[1])}</h2>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(b[1])}</p>")
        elif kind == "warn":
            parts.append(f"<p class='warn'><b>Warning:</b> {html.escape(b[1])}</p>")
        elif kind == "li":
            parts.append(f"<ul><li>{html.escape(b[1])}</li></ul>")
        elif kind == "table":
            parts.append(b[2].to_html(escape=False, border=0))
        elif kind == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(b[2])}' src='data:image/png;base64,{data}'><figcaption>{html.escape(b[2])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
