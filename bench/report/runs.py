"""Reading a study's runs back from MLflow (``mlflow.search_runs`` -> pandas): one row a trial
run, with its variant, seed, grid point and state read from the tags the harness wrote
(:mod:`bench.records`)."""

from __future__ import annotations

import os
from contextlib import contextmanager

import mlflow
import numpy as np
import pandas as pd

from ..records import GRID_TAG_PREFIX, ROLE_TRIAL, Tag

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
    """Each run's grid point, read from its grid tags (:func:`bench.records.grid_tag`): ``{"a.b": "v"}``."""
    prefix = f"tags.{GRID_TAG_PREFIX}"
    cols = [c for c in df.columns if c.startswith(prefix)]
    return pd.Series(
        [{c.removeprefix(prefix): row[c] for c in cols if isinstance(row[c], str)} for _, row in df.iterrows()],
        index=df.index,
        dtype=object,
    )


def load_runs(uri: str, study: str) -> pd.DataFrame:
    """The study's trial runs, all statuses, one row each, with ``variant``, ``seed``, ``group``
    (variant plus grid point), ``state`` (FINISHED, FAILED, PRUNED, RUNNING) and the grid axes as
    columns ``grid.<path>``."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..stores import TrackingStoreError

    try:
        with tracking_uri(uri):
            exp = mlflow.get_experiment_by_name(study)
            if exp is None:
                raise ReportError(
                    f"no study {study!r} in the MLflow store {uri} (run `bench run` first, or pass --tracking-uri)"
                )
            df = mlflow.search_runs(
                experiment_ids=[exp.experiment_id],
                filter_string=f"tags.`{Tag.ROLE}` = '{ROLE_TRIAL}'",
                max_results=100_000,
                order_by=["attributes.start_time ASC"],
            )
    except (mlflow.exceptions.MlflowException, SQLAlchemyError) as e:  # a damaged or foreign database file
        cause = e.__cause__ or e
        first = (str(getattr(cause, "orig", None) or cause).strip().splitlines() or [""])[0][:200]
        raise TrackingStoreError(
            uri, f"cannot be read ({type(getattr(cause, 'orig', None) or cause).__name__}: {first})"
        ) from e
    if df.empty:
        raise ReportError(f"study {study!r} has no trial runs in {uri}")
    df = df.rename(columns={f"tags.{Tag.VARIANT}": "variant"})
    df["seed"] = pd.to_numeric(df[f"tags.{Tag.SEED}"], errors="coerce").astype("Int64")
    df["state"] = np.where(
        df.get(f"tags.{Tag.STATE}", pd.Series(index=df.index, dtype=object)) == "PRUNED", "PRUNED", df["status"]
    )
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
    t = pd.crosstab(df["group"], df["state"]).reindex(
        columns=["FINISHED", "FAILED", "PRUNED", "RUNNING", "KILLED"], fill_value=0
    )
    t = t.loc[:, (t != 0).any() | t.columns.isin(["FINISHED", "FAILED", "PRUNED", "RUNNING"])]
    expected = expected_seeds or int(finished(df).groupby("group")["seed"].nunique().max() or 0)
    t["seeds"] = finished(df).groupby("group")["seed"].nunique().reindex(t.index, fill_value=0)
    t["expected"] = expected
    return t.reindex(pd.unique(df["group"]))


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
