"""The report's statistics: mean +- std over seeds per group, and paired differences to the
baseline with a paired t-test and a 95% confidence interval (the paired t-interval below
:data:`T_INTERVAL_BELOW` seed pairs, the percentile bootstrap from there)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .runs import METRICS, finished

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
    sd: float = float("nan")  # sample std of the paired differences (2+ pairs)


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
            ci = stats.bootstrap(
                (d.to_numpy(),), np.mean, n_resamples=5000, method="percentile", random_state=0
            ).confidence_interval
            kind = "bootstrap"
        lo, hi = float(ci.low), float(ci.high)
    sd = float(d.std(ddof=1)) if len(d) >= 2 else float("nan")
    return Comparison(group, metric, len(d), float(d.mean()), lo, hi, p, kind, sd)


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
            row[f"{m}_mean"], row[f"{m}_std"] = (
                (v.mean(), v.std(ddof=1) if len(v) > 1 else 0.0) if len(v) else (np.nan, np.nan)
            )
        base_group = _baseline_group(df, group, baseline)
        if base_group and base_group != group:
            for m in metrics:
                c = paired(df, group, base_group, m)
                if c is not None:
                    row.update(
                        {
                            f"{m}_diff": c.diff,
                            f"{m}_ci_low": c.ci_low,
                            f"{m}_ci_high": c.ci_high,
                            f"{m}_p": c.p,
                            f"{m}_pairs": c.n,
                            f"{m}_ci_kind": c.ci_kind,
                            f"{m}_diff_sd": c.sd,
                        }
                    )
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
