"""Reading a study's runs back from MLflow (``mlflow.search_runs`` -> pandas) and the statistics
of the report: mean +- std over seeds, paired differences to the baseline with a paired t-test
and a confidence interval (the paired t-interval below 8 seeds, a bootstrap one from there).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
from scipy import stats

METRICS = ("pseudo_miou", "pseudo_miou_crf", "seg_miou")
METRIC_LABELS = {"pseudo_miou": "pseudo mIoU", "pseudo_miou_crf": "pseudo mIoU (CRF)", "seg_miou": "seg. mIoU"}


class ReportError(ValueError):
    """Nothing to report (no such study, no finished run); a one-line message."""


@contextmanager
def tracking_uri(uri: str):
    """Point the fluent MLflow API at ``uri`` and put back what was there (it exports
    ``MLFLOW_TRACKING_URI`` as a side effect)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def run_grid_points(df: pd.DataFrame) -> pd.Series:
    """Each run's grid point, read from its ``bench.grid.<axis>`` tags: ``{"a.b": "v"}``."""
    prefix = "tags.bench.grid."
    cols = [c for c in df.columns if c.startswith(prefix)]
    return pd.Series(
        [{c.removeprefix(prefix): row[c] for c in cols if isinstance(row[c], str)} for _, row in df.iterrows()],
        index=df.index, dtype=object,
    )  # fmt: skip


def load_runs(uri: str, study: str) -> pd.DataFrame:
    """The study's trial runs, all statuses, one row each, with ``variant``, ``seed``, ``group``
    (variant plus grid point), ``state`` (FINISHED, FAILED, PRUNED, RUNNING) and the grid axes as
    columns ``grid.<path>``."""
    with tracking_uri(uri):
        exp = mlflow.get_experiment_by_name(study)
        if exp is None:
            raise ReportError(f"no study {study!r} in the MLflow store {uri} (run `bench run` first, or pass --tracking-uri)")
        df = mlflow.search_runs(
            experiment_ids=[exp.experiment_id], filter_string="tags.`bench.role` = 'trial'",
            max_results=100_000, order_by=["attributes.start_time ASC"],
        )  # fmt: skip
    if df.empty:
        raise ReportError(f"study {study!r} has no trial runs in {uri}")
    df = df.rename(columns={"tags.bench.variant": "variant"})
    df["seed"] = pd.to_numeric(df["tags.bench.seed"], errors="coerce").astype("Int64")
    df["state"] = np.where(df.get("tags.bench.state", pd.Series(index=df.index, dtype=object)) == "PRUNED",
                           "PRUNED", df["status"])  # fmt: skip
    grids = run_grid_points(df)
    axes = sorted({k for g in grids for k in g})
    for axis in axes:
        df[f"grid.{axis}"] = grids.map(lambda g, a=axis: g.get(a))
    df["group"] = df["variant"] + grids.map(lambda g: "".join(f" {k.split('.')[-1]}={v}" for k, v in sorted(g.items())))
    df.attrs["grid_axes"] = axes
    return df


def finished(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["state"] == "FINISHED"]


def status_table(df: pd.DataFrame, expected_seeds: int | None) -> pd.DataFrame:
    """Per group: finished / failed / pruned / running counts and whether seeds are missing."""
    t = pd.crosstab(df["group"], df["state"]).reindex(columns=["FINISHED", "FAILED", "PRUNED", "RUNNING", "KILLED"], fill_value=0)
    t = t.loc[:, (t != 0).any() | t.columns.isin(["FINISHED", "FAILED", "PRUNED", "RUNNING"])]
    expected = expected_seeds or int(finished(df).groupby("group")["seed"].nunique().max() or 0)
    t["seeds"] = finished(df).groupby("group")["seed"].nunique().reindex(t.index, fill_value=0)
    t["expected"] = expected
    return t.reindex(pd.unique(df["group"]))


T_INTERVAL_BELOW = 8  # fewer paired seeds than this: the paired t-interval, else the bootstrap
SAME_DIFFERENCE = 1e-12  # paired differences whose spread is below this are equal (float rounding)


@dataclass
class Comparison:
    """A group against the baseline over the seeds both have (paired). ``ci_kind``: ``"t"``
    (paired t-interval) or ``"bootstrap"`` (percentile bootstrap); None without an interval."""

    group: str
    metric: str
    n: int
    diff: float
    ci_low: float
    ci_high: float
    p: float
    ci_kind: str | None = None


def paired(df: pd.DataFrame, group: str, baseline: str, metric: str) -> Comparison | None:
    """Paired difference ``group - baseline`` of ``metric`` over shared seeds: mean, two-sided
    paired t-test p (2+ seeds) and a 95% CI: below ``T_INTERVAL_BELOW`` pairs the paired
    t-interval (the interval of that same test: it excludes 0 exactly when p < 0.05), from there
    on the percentile bootstrap (``scipy.stats.bootstrap``). With 3 seeds a percentile bootstrap
    is little more than the range of the three differences, far narrower than the test implies."""
    col = f"metrics.{metric}"
    if col not in df:
        return None
    f = finished(df)
    a = f[f["group"] == group].groupby("seed")[col].mean()
    b = f[f["group"] == baseline].groupby("seed")[col].mean()
    d = (a - b).dropna()
    if d.empty:
        return None
    lo = hi = p = float("nan")
    kind = None
    # identical differences (0.55 - 0.5 and 0.45 - 0.4 differ by 1e-17) have no test: a t-test on
    # the rounding would report p = 1e-31
    if len(d) >= 2 and d.max() - d.min() > SAME_DIFFERENCE:
        test = stats.ttest_rel(a[d.index], b[d.index])
        p = float(test.pvalue)
        if len(d) < T_INTERVAL_BELOW:
            ci, kind = test.confidence_interval(0.95), "t"
        else:
            ci = stats.bootstrap((d.to_numpy(),), np.mean, n_resamples=5000, method="percentile", random_state=0).confidence_interval
            kind = "bootstrap"
        lo, hi = float(ci.low), float(ci.high)
    return Comparison(group, metric, len(d), float(d.mean()), lo, hi, p, kind)


CI_NAMES = {"t": "paired t-interval", "bootstrap": "percentile bootstrap CI"}


def summary(df: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """One row per group (in run order): mean, std and n of each metric present, and the
    paired difference, CI and p to ``baseline`` (same grid point, shared seeds)."""
    f = finished(df)
    metrics = [m for m in METRICS if f"metrics.{m}" in f and f[f"metrics.{m}"].notna().any()]
    rows = []
    for group in pd.unique(df["group"]):
        g = f[f["group"] == group]
        row: dict = {"group": group, "variant": g["variant"].iloc[0] if len(g) else None, "n": g["seed"].nunique()}
        for m in metrics:
            v = g[f"metrics.{m}"].dropna()
            row[f"{m}_mean"], row[f"{m}_std"] = (v.mean(), v.std(ddof=1) if len(v) > 1 else 0.0) if len(v) else (np.nan, np.nan)
        base_group = _baseline_group(df, group, baseline)
        if base_group and base_group != group:
            for m in metrics:
                c = paired(df, group, base_group, m)
                if c is not None:
                    row.update({f"{m}_diff": c.diff, f"{m}_ci_low": c.ci_low, f"{m}_ci_high": c.ci_high,
                                f"{m}_p": c.p, f"{m}_pairs": c.n, f"{m}_ci_kind": c.ci_kind})  # fmt: skip
        rows.append(row)
    out = pd.DataFrame(rows).set_index("group")
    out.attrs["metrics"] = metrics
    return out


def _baseline_group(df: pd.DataFrame, group: str, baseline: str | None) -> str | None:
    """The baseline variant's group at the same grid point as ``group``."""
    if not baseline or baseline not in set(df["variant"]):
        return None
    variant = df.loc[df["group"] == group, "variant"].iloc[0]
    candidate = baseline + group[len(variant) :]
    return candidate if candidate in set(df["group"]) else None


def per_class_iou(df: pd.DataFrame, crf: bool) -> pd.DataFrame:
    """Mean per-class IoU over seeds: rows = groups, columns = classes."""
    prefix = "metrics.iou_crf_" if crf else "metrics.iou_"
    cols = [c for c in df.columns if c.startswith(prefix) and (crf or not c.startswith("metrics.iou_crf_"))]
    f = finished(df)
    t = f.groupby("group", sort=False)[cols].mean()
    t.columns = [c.removeprefix(prefix) for c in cols]
    order = sorted(t.columns, key=lambda c: (c != "background", c))
    return t[order]


def metric_histories(uri: str, df: pd.DataFrame, keys=("monitor_pseudo_miou", "loss")) -> pd.DataFrame:
    """Per-epoch metrics of the finished runs: columns group, variant, seed, key, step, value."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    rows = []
    for _, r in finished(df).iterrows():
        for key in keys:
            for m in client.get_metric_history(r["run_id"], key):
                rows.append((r["group"], r["variant"], r["seed"], key, m.step, m.value))
    return pd.DataFrame(rows, columns=["group", "variant", "seed", "key", "step", "value"])
