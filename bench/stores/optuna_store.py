"""Optuna storage by scale, and the bookkeeping the harness needs on top of it.

- ``journal:PATH`` (the default, ``journal:.bench/optuna.journal``): a journal file, safe for
  several processes on one host. It has no heartbeat, so a trial whose worker died (``kill -9``)
  is found here: it records its host, pid and the pid's start time, and a RUNNING trial whose
  process is gone on this host is failed by :func:`fail_dead_trials`.
- ``sqlite:///PATH``: one writer at a time (fine for one worker and resuming).
- ``postgresql://...`` (or any RDB URL): many machines. A worker records a heartbeat for the
  trial it runs (:func:`heartbeat`); a trial whose heartbeat stopped for the grace period
  (worker killed, machine gone) is failed by Optuna in :func:`fail_dead_trials`.
"""

from __future__ import annotations

import os
import socket
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from ..records import Attr
from .file_lock import file_lock

DEFAULT_STORAGE = "journal:.bench/optuna.journal"
HEARTBEAT_SECONDS = int(os.environ.get("BENCH_HEARTBEAT_SECONDS", 20))
GRACE_SECONDS = int(os.environ.get("BENCH_HEARTBEAT_GRACE_SECONDS", 60))


def resolve_storage_url(cli: str | None, study: str | None) -> str:
    """``--storage`` > ``BENCH_OPTUNA_STORAGE`` > the study's ``tracking.optuna_storage`` >
    the embedded journal file in the working directory."""
    return cli or os.environ.get("BENCH_OPTUNA_STORAGE") or study or DEFAULT_STORAGE


def storage_exists(url: str) -> bool:
    """Whether the storage already holds anything (for read-only commands); RDB: assumed."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:")).expanduser().is_file()
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).is_file()
    return True


@contextmanager
def study_lock(url: str, study_name: str) -> Iterator[None]:
    """An exclusive lock (``fcntl.flock``) beside a journal or SQLite storage file, held while a
    process checks and enqueues a study's jobs, so two ``bench run`` started together enqueue
    each job once. Nothing for a server database (one ``bench run`` starts a study; the other
    machines join with ``bench worker``, which never enqueues)."""
    for prefix in ("journal:", "sqlite:///"):
        if url.startswith(prefix):
            path = Path(url.removeprefix(prefix)).expanduser()
            break
    else:
        yield
        return
    with file_lock(path.with_name(f"{path.name}.{study_name}.lock")):
        yield


def open_storage(url: str) -> BaseStorage:
    """An Optuna storage for ``url`` (see the module docstring for the kinds)."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    if url.startswith("sqlite:"):
        return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return rdb_with_heartbeat(url, HEARTBEAT_SECONDS, GRACE_SECONDS)


class StaleTrials:
    """An RDB storage's heartbeat-stale callback: remembers the trials Optuna itself failed, so
    that only those (not trials another worker completed meanwhile) count as dead."""

    def __init__(self) -> None:
        self.failed: list[optuna.trial.FrozenTrial] = []

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.failed.append(trial)


def rdb_with_heartbeat(url: str, interval: int, grace: int, **kw) -> RDBStorage:
    """An RDB storage whose trials are failed ``grace`` seconds after their last heartbeat."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(url, heartbeat_interval=interval, grace_period=grace,
                          heartbeat_stale_trial_callback=StaleTrials(), **kw)  # fmt: skip


@contextmanager
def heartbeat(storage: BaseStorage, study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat every ``heartbeat_interval`` seconds while the block runs
    (a daemon thread; nothing on storages without heartbeat)."""
    interval = storage.get_heartbeat_interval() if isinstance(storage, RDBStorage) else None
    if not interval:
        yield
        return
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), trial.number
    )
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a passing database error: try again at the next beat
                pass
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 5)


def process_start_time(pid: int) -> str | None:
    """The start time (clock ticks since boot) of ``pid`` from /proc, or None if not running."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def worker_identity() -> dict[str, str]:
    """Host, pid and the pid's start time, in the order they are to be written (start last)."""
    pid = os.getpid()
    return {Attr.WORKER_HOST: socket.gethostname(), Attr.WORKER_PID: str(pid),
            Attr.WORKER_START: process_start_time(pid) or ""}  # fmt: skip


def is_dead(trial: optuna.trial.FrozenTrial) -> bool:
    """A RUNNING trial of this host whose worker process is gone (or its pid reused)."""
    attrs = trial.user_attrs
    if attrs.get(Attr.WORKER_HOST) != socket.gethostname() or Attr.WORKER_START not in attrs:
        return False  # another host's, or its identity is still being written (start comes last)
    started = process_start_time(int(attrs[Attr.WORKER_PID]))
    return started is None or started != attrs.get(Attr.WORKER_START)


def fail_dead_trials(study: optuna.Study, storage: BaseStorage) -> list[optuna.trial.FrozenTrial]:
    """Mark the RUNNING trials of dead workers FAIL; returns them (so their runs can be closed)."""
    failed = []
    study_id = storage.get_study_id_from_name(study.study_name)
    stale = storage.get_heartbeat_stale_trial_callback() if isinstance(storage, RDBStorage) else None
    if isinstance(stale, StaleTrials):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        failed += stale.failed
        stale.failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_dead(t):
            try:
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
                if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                    failed.append(t)
            except Exception:  # finished meanwhile
                pass
    return failed


def claim_waiting_trial(study: optuna.Study, storage: BaseStorage) -> optuna.Trial | None:
    """Atomically take one WAITING (enqueued) trial and make it RUNNING; None if none is left.

    Two workers racing for the same trial: the storage lets exactly one change WAITING to
    RUNNING; the other moves on to the next.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    for ft in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, ft.number)
        try:
            if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                return optuna.Trial(study, trial_id)
        except Exception:  # taken and finished by another worker
            continue
    return None
