"""MLflow: one experiment per study, one parent run per study, one child run per trial.

Everything goes through ``MlflowClient`` with explicit run ids (no global active run), so
several trials, threads or processes never mix their runs.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID
from ..records import ROLE_STUDY, ROLE_TRIAL, Tag
from ..signals import Interrupted, stop_requested
from .file_lock import file_lock

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"
MLFLOW_DESCRIPTION = "mlflow.note.content"  # MLflow's own tag for an experiment's description
MAX_BATCH = 900
#: MLflow 3's UI shows an experiment with this tag value as a training experiment (runs table),
#: not as a GenAI one (traces overview).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


class TrackingStoreError(RuntimeError):
    """The MLflow store failed (unreachable, unwritable, corrupt); ``str()`` is one line, naming
    the store and, once :class:`bench.run.trial.TrialLifecycle` has set it, the trial."""

    def __init__(self, uri: str, detail: str, trial: int | None = None):
        super().__init__(uri, detail)
        self.uri, self.detail, self.trial = uri, detail, trial

    def __str__(self) -> str:
        during = f" during trial {self.trial}" if self.trial is not None else ""
        return f"MLflow store {self.uri} failed{during}: {self.detail}"


class _OneLineRecords:
    """A logging filter that folds a record to its first line and drops its traceback."""

    def filter(self, record) -> bool:
        record.msg = (record.getMessage().strip().splitlines() or [""])[0]
        record.args, record.exc_info, record.exc_text, record.stack_info = None, None, None, None
        return True


def quiet_mlflow_logs() -> None:
    """MLflow's loggers print at most one line a record, and its store's error log not at all.

    MLflow's SQL store logs every database error with its traceback (``mlflow.store.db.utils``)
    and then raises it; the harness reports that exception once, as one line naming the store
    and the trial (:class:`TrackingStoreError`), so the log would only repeat it as a traceback.
    Called when this module is imported, after MLflow (which installs its handlers on import)."""
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    for name in ("mlflow", "alembic", "sqlalchemy.engine"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _OneLineRecords) for f in handler.filters):
                handler.addFilter(_OneLineRecords())


def _root_cause(e: BaseException) -> BaseException:
    """The innermost exception of ``e``'s chain (SQLAlchemy and MLflow wrap the database's own)."""
    seen = {id(e)}
    while (inner := e.__cause__ or e.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        e = inner
    return e


def _store_call(method):
    """Turn any failure of the MLflow store inside a Tracker method into one TrackingStoreError;
    one that comes of a SIGINT/SIGTERM received meanwhile is that interrupt (bench.signals)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except TrackingStoreError:
            raise
        except Exception as e:
            if (signum := stop_requested()) is not None:  # an interrupt MLflow or SQLAlchemy wrapped
                raise Interrupted(signum) from e
            cause = _root_cause(e)
            first = (str(cause).strip().splitlines() or [""])[0][:200]
            raise TrackingStoreError(self.uri, f"{type(cause).__name__}: {first}") from e

    return wrapper


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock (``fcntl.flock`` on ``<db>.lock``) around the creation of a SQLite
    store, its experiment and the study's parent run, so that processes started together do not
    race in MLflow's schema migration. Nothing for a tracking server (it serialises itself)."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    with file_lock(db.with_name(db.name + ".lock")):
        yield


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


@functools.lru_cache(maxsize=1)
def source_tags() -> dict[str, str]:
    """Git commit of the source checkout, package versions, host."""
    tags = {Tag.HOST: socket.gethostname()}
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
            tags[Tag.GIT_DIRTY] = str(bool(dirty)).lower()
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

    def __init__(self, uri: str, study_name: str, description: str = ""):
        self.uri = uri
        self.study_name = study_name
        self.description = description  # the experiment's description in the MLflow UI
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._parent: str | None = None

    @property
    def client(self) -> MlflowClient:
        """The MLflow client; its first use creates the store (schema migration), under the lock."""
        if self._client is None:
            self._open(parent=False)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._open(parent=False)
        return self._experiment_id

    def open(self) -> str:
        """Create (or find) the store, the study's experiment and its one parent run, under
        :func:`store_lock`; returns the parent run id. Every process of a study calls this."""
        self._open(parent=True)
        return self._parent

    @_store_call
    def _open(self, parent: bool) -> None:
        with store_lock(self.uri):
            if self._client is None:
                self._client = MlflowClient(tracking_uri=self.uri)
            if self._experiment_id is None:
                self._experiment_id = self.ensure_experiment()
            if parent and self._parent is None:
                self._parent = self.parent_run()

    def ensure_experiment(self) -> str:
        """The study's experiment (tagged as a training experiment for MLflow 3's UI, described by
        the study's ``description``), created with artifacts under ``./mlartifacts`` for a local
        store if missing."""
        exp = self.client.get_experiment_by_name(self.study_name)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:") or "://" not in self.uri:
                location = (Path(DEFAULT_ARTIFACT_DIR).resolve() / self.study_name).as_uri()
            tags = {**EXPERIMENT_KIND, **({MLFLOW_DESCRIPTION: self.description} if self.description else {})}
            try:
                exp_id = self.client.create_experiment(self.study_name, artifact_location=location, tags=tags)
            except Exception:  # a tracking server: another process created it meanwhile
                exp = self.client.get_experiment_by_name(self.study_name)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp_id)
        return exp_id

    def _parent_runs(self) -> list:
        return self.client.search_runs(
            [self._experiment_id], filter_string=f"tags.`{Tag.ROLE}` = '{ROLE_STUDY}'", max_results=10,
            order_by=["attributes.start_time ASC"],
        )  # fmt: skip

    def parent_run(self, create: bool = True) -> str | None:
        """The study's one parent run id, created (RUNNING) if missing and ``create``. Called
        under :func:`store_lock`; on a tracking server two processes may both create one: the
        earliest is kept and the other deleted."""
        if self._parent is not None:
            return self._parent
        self.experiment_id  # noqa: B018 (finds or creates the experiment)
        runs = self._parent_runs()
        if runs or not create:
            return runs[0].info.run_id if runs else None
        tags = {Tag.ROLE: ROLE_STUDY, Tag.STUDY: self.study_name, **source_tags()}
        mine = self.client.create_run(self._experiment_id, tags=tags, run_name=self.study_name).info.run_id
        first = self._parent_runs()[0].info.run_id
        if first != mine:  # lost the race (tracking server): join the winner's run
            self.client.delete_run(mine)
        return first

    def runs_url(self, base: str) -> str:
        """The MLflow UI's page of this study's runs table, under ``base`` (http://host:port)."""
        return f"{base.rstrip('/')}/#/experiments/{self.experiment_id}/runs"

    @_store_call
    def start_trial(self, parent_id: str, run_name: str, tags: dict[str, Any], params: dict[str, Any]) -> str:
        all_tags = {MLFLOW_PARENT_RUN_ID: parent_id, Tag.ROLE: ROLE_TRIAL, Tag.STUDY: self.study_name,
                    **source_tags(), **{k: str(v) for k, v in tags.items()}}  # fmt: skip
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=run_name)
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run.info.run_id, params=items[i : i + 100])
        return run.info.run_id

    @_store_call
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if v == v]  # drop NaN
        for i in range(0, len(items), MAX_BATCH):
            self.client.log_batch(run_id, metrics=items[i : i + MAX_BATCH])

    @_store_call
    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    @_store_call
    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    @_store_call
    def end(self, run_id: str, status: str) -> None:
        """``status``: FINISHED, FAILED or KILLED (pruned trials are KILLED, tagged PRUNED)."""
        self.client.set_terminated(run_id, status)

    @_store_call
    def log_table(self, run_id: str, data, artifact_file: str) -> None:
        self.client.log_table(run_id, data=data, artifact_file=artifact_file)

    @_store_call
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def run_status(self, run_id: str) -> str | None:
        try:
            return self.client.get_run(run_id).info.status
        except Exception:
            return None


quiet_mlflow_logs()  # every process that tracks (bench, its workers, DDP rank 0) gets one-line MLflow logs
