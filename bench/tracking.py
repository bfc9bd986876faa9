"""MLflow: one experiment per study, one parent run per study, one child run per trial.

Everything goes through ``MlflowClient`` with explicit run ids (no global active run), so
several trials, threads or processes never mix their runs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"
ROLE = "bench.role"
MAX_BATCH = 900


def resolve_tracking_uri(cli: str | None, study: str | None) -> str:
    """``--tracking-uri`` > ``MLFLOW_TRACKING_URI`` > the study's ``tracking.mlflow_uri`` > the
    embedded default ``sqlite:///mlflow.db`` in the working directory.

    A relative SQLite path is made absolute: MLflow caches its store per URI string, so a
    relative one would keep pointing at the first working directory of the process.
    """
    uri = cli or os.environ.get("MLFLOW_TRACKING_URI") or study or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def store_exists(uri: str) -> bool:
    """False for a SQLite store whose file is missing (a read-only command must not create it)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).is_file() or uri.endswith(":memory:")
    return True


@lru_cache(maxsize=1)
def source_tags() -> dict[str, str]:
    """Git commit of the source checkout, package versions, host."""
    tags = {"bench.host": socket.gethostname()}
    src = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()  # fmt: skip
        if commit:
            tags[MLFLOW_GIT_COMMIT] = commit
            tags["bench.git_dirty"] = str(bool(dirty)).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    for pkg in ("tkp-bench", "torch", "timm", "numpy", "optuna", "mlflow", "pydensecrf2"):
        try:
            tags[f"version.{pkg}"] = version(pkg)
        except PackageNotFoundError:
            pass
    return tags


class Tracker:
    """The MLflow side of one study."""

    def __init__(self, uri: str, study_name: str):
        self.uri = uri
        self.study_name = study_name
        self.client = MlflowClient(tracking_uri=uri)
        self._experiment_id: str | None = None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self.ensure_experiment()
        return self._experiment_id

    def ensure_experiment(self) -> str:
        """The study's experiment, created (artifacts under ``./mlartifacts`` for a local
        store) if missing. Call once before starting workers."""
        exp = self.client.get_experiment_by_name(self.study_name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:") or "://" not in self.uri:
            location = (Path(DEFAULT_ARTIFACT_DIR).resolve() / self.study_name).as_uri()
        try:
            return self.client.create_experiment(self.study_name, artifact_location=location)
        except Exception:  # created meanwhile by another process
            exp = self.client.get_experiment_by_name(self.study_name)
            if exp is None:
                raise
            return exp.experiment_id

    def parent_run(self, create: bool = True) -> str | None:
        """The study's parent run id, created (RUNNING) if missing and ``create``."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{ROLE}` = 'study'", max_results=1,
            order_by=["attributes.start_time ASC"],
        )  # fmt: skip
        if runs:
            return runs[0].info.run_id
        if not create:
            return None
        tags = {ROLE: "study", "bench.study": self.study_name, **source_tags()}
        return self.client.create_run(self.experiment_id, tags=tags, run_name=self.study_name).info.run_id

    def start_trial(self, parent_id: str, run_name: str, tags: dict[str, Any], params: dict[str, Any]) -> str:
        all_tags = {MLFLOW_PARENT_RUN_ID: parent_id, ROLE: "trial", "bench.study": self.study_name,
                    **source_tags(), **{k: str(v) for k, v in tags.items()}}  # fmt: skip
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=run_name)
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run.info.run_id, params=items[i : i + 100])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if v == v]  # drop NaN
        for i in range(0, len(items), MAX_BATCH):
            self.client.log_batch(run_id, metrics=items[i : i + MAX_BATCH])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def end(self, run_id: str, status: str) -> None:
        """``status``: FINISHED, FAILED or KILLED (pruned trials are KILLED, tagged PRUNED)."""
        self.client.set_terminated(run_id, status)

    def run_status(self, run_id: str) -> str | None:
        try:
            return self.client.get_run(run_id).info.status
        except Exception:
            return None
