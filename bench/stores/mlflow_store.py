"""MLflow: one experiment per study, one parent run per study, one child run per trial.

Everything goes through ``MlflowClient`` with explicit run ids (no global active run), so
several trials, threads or processes never mix their runs.
"""

from __future__ import annotations

import functools
import os
import socket
import sqlite3
import subprocess
import sys
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
from .errors import TrackingStoreError
from .file_lock import file_lock
from .system_metrics import start_monitor

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"
MLFLOW_DESCRIPTION = "mlflow.note.content"  # MLflow's own tag for an experiment's description
MAX_BATCH = 900
#: MLflow 3's UI shows an experiment with this tag value as a training experiment (runs table),
#: not as a GenAI one (traces overview).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


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


def _root_cause(e: BaseException, outside: BaseException | None = None) -> BaseException:
    """The innermost exception of ``e``'s chain (SQLAlchemy and MLflow wrap the database's own),
    not walking into ``outside`` (the exception being handled when the store was called, e.g. a
    trial's own error that ``TrialLifecycle.__exit__`` records: it is no cause of the store's)."""
    seen = {id(e)}
    while True:
        inner = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)
        if inner is None or inner is outside or id(inner) in seen:
            return e
        seen.add(id(inner))
        e = inner


def _duplicate_row(e: BaseException) -> bool:
    """Whether a store error is a unique constraint of the database (SQLite, PostgreSQL, MySQL)."""
    text = f"{type(_root_cause(e)).__name__}: {_root_cause(e)}"
    return any(m in text for m in ("IntegrityError", "UNIQUE constraint failed", "duplicate key", "Duplicate entry"))


def _store_call(method):
    """Turn any failure of the MLflow store inside a Tracker method into one TrackingStoreError;
    one that comes of a SIGINT/SIGTERM received meanwhile is that interrupt (bench.signals)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        in_flight = sys.exc_info()[1]  # what the caller is handling (a trial's error being recorded), if anything
        try:
            return method(self, *args, **kwargs)
        except TrackingStoreError:
            raise
        except Exception as e:
            if (signum := stop_requested()) is not None:  # an interrupt MLflow or SQLAlchemy wrapped
                raise Interrupted(signum) from e
            cause = _root_cause(e, outside=in_flight)
            first = (str(cause).strip().splitlines() or [""])[0][:200]
            err = TrackingStoreError(self.uri, f"{type(cause).__name__}: {first}")
            err.first = in_flight
            raise err from e

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


def _schema_problem(db: Path) -> tuple[str, int] | None:
    """Why an existing SQLite file is not a finished MLflow store (its creation cut short: no
    schema version, a migration's ``_alembic_tmp_*`` table left, a version other than this
    MLflow's), and how many runs it holds; None for a finished store, or a file SQLite cannot
    read (MLflow reports that one itself)."""
    if db.stat().st_size == 0:
        return "is empty", 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            runs = con.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
            version = (
                con.execute("SELECT version_num FROM alembic_version").fetchone()
                if "alembic_version" in tables
                else None
            )
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return None
    left = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    if left:
        return f"was left half-migrated (table {left[0]})", runs
    if version is None:
        return "has no schema version (its creation was cut short)", runs
    from mlflow.store.db.utils import _get_latest_schema_revision

    head = _get_latest_schema_revision()
    if version[0] != head:
        return f"has schema version {version[0]}, not this MLflow's {head}", runs
    return None


def _aside(path: Path, what: str) -> Path:
    return path.with_name(f"{path.name}.{what}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")


def prepare_sqlite_store(uri: str) -> None:
    """Make sure a SQLite store at ``uri`` is whole before MLflow opens it (called under
    :func:`store_lock`).

    A new store is created in a temporary file beside the target and renamed into place only
    once MLflow's schema migration has finished, so a full disk or a crash never leaves a
    half-migrated ``mlflow.db``. An existing one left half-created by an older version (see
    :func:`_schema_problem`) is moved aside with a one-line warning and created again if it holds
    no runs, and refused (:class:`TrackingStoreError`, exit 2) if it does."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    if db.is_file():
        found = _schema_problem(db)
        if found is None:
            return
        problem, runs = found
        if runs:
            raise TrackingStoreError(
                uri,
                f"the store {problem} and holds {runs} run(s), so it is left as it is: "
                f"upgrade it (`mlflow db upgrade {uri}`) or move it aside",
                exit_code=2,
            )
        aside = _aside(db, "half-created")
        os.replace(db, aside)
        for extra in ("-journal", "-wal", "-shm"):
            side = db.with_name(db.name + extra)
            if side.exists():
                os.replace(side, aside.with_name(aside.name + extra))
        print(
            f"bench: warning: MLflow store {db} {problem} and holds no runs; moved it to {aside} and created it again",
            file=sys.stderr,
        )
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_name(f".{db.name}.creating-{os.getpid()}-{time.monotonic_ns()}")
    try:
        store = MlflowClient(tracking_uri=f"sqlite:///{tmp}")._tracking_client.store  # runs the migration
        store.engine.dispose()
        os.replace(tmp, db)
    finally:
        for extra in ("", "-journal", "-wal", "-shm"):
            Path(f"{tmp}{extra}").unlink(missing_ok=True)


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
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
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
        self._monitors: dict[str, Any] = {}  # run id -> its SystemMetricsMonitor

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
                prepare_sqlite_store(self.uri)
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
            [self._experiment_id],
            filter_string=f"tags.`{Tag.ROLE}` = '{ROLE_STUDY}'",
            max_results=10,
            order_by=["attributes.start_time ASC"],
        )

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
        all_tags = {
            MLFLOW_PARENT_RUN_ID: parent_id,
            Tag.ROLE: ROLE_TRIAL,
            Tag.STUDY: self.study_name,
            **source_tags(),
            **{k: str(v) for k, v in tags.items()},
        }
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=run_name)
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run.info.run_id, params=items[i : i + 100])
        self._watch(run.info.run_id)
        return run.info.run_id

    def _watch(self, run_id: str) -> None:
        if (monitor := start_monitor(run_id, self.uri)) is not None:
            self._monitors[run_id] = monitor

    def _unwatch(self, run_id: str) -> None:
        if (monitor := self._monitors.pop(run_id, None)) is not None:
            monitor.finish()  # its last samples written before the run ends

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
    def log_datasets(self, run_id: str, datasets: list[tuple[str, str, str]]) -> None:
        """Each (name, digest, context) as one of the run's dataset inputs (the runs table's
        Dataset column); ``context`` is the input's ``mlflow.data.context`` tag."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        inputs = [
            DatasetInput(Dataset(name, digest, "bench", name), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
            for name, digest, context in datasets
        ]
        for attempt in range(3):
            try:
                self.client.log_inputs(run_id, datasets=inputs)
                return
            except Exception as e:
                # two workers logging a new dataset at once: one inserts its row, the other's insert
                # breaks MLflow's unique (experiment, name, digest); logged again, the row is found
                if attempt == 2 or not _duplicate_row(e):
                    raise
                time.sleep(0.2 * (attempt + 1))

    @_store_call
    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    @_store_call
    def end(self, run_id: str, status: str) -> None:
        """``status``: FINISHED, FAILED or KILLED (pruned trials are KILLED, tagged PRUNED)."""
        self._unwatch(run_id)
        self.client.set_terminated(run_id, status)

    @_store_call
    def log_table(self, run_id: str, data, artifact_file: str) -> None:
        self.client.log_table(run_id, data=data, artifact_file=artifact_file)

    @_store_call
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    @_store_call
    def finished_job_keys(self) -> set[str]:
        """The job keys of the study's FINISHED trial runs."""
        keys: set[str] = set()
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{Tag.ROLE}` = '{ROLE_TRIAL}' and attributes.status = 'FINISHED'",
                max_results=1000,
                page_token=token,
            )
            keys.update(r.data.tags[Tag.JOB_KEY] for r in page if Tag.JOB_KEY in r.data.tags)
            token = page.token
            if not token:
                return keys

    def run_status(self, run_id: str) -> str | None:
        try:
            return self.client.get_run(run_id).info.status
        except Exception:
            return None


quiet_mlflow_logs()  # every process that tracks (bench, its workers, DDP rank 0) gets one-line MLflow logs
