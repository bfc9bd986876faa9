"""Optuna storage by scale, and the bookkeeping the harness needs on top of it.

- ``journal:PATH`` (the default, ``journal:.bench/optuna.journal``): a journal file, safe for
  several processes on one host. It has no heartbeat, so a trial whose worker died (``kill -9``)
  is found here: it records its host, pid and the pid's start time, and a RUNNING trial whose
  process is gone on this host is failed by :func:`fail_dead_trials`.
- ``sqlite:///PATH``: one writer at a time (fine for one worker and resuming).
- ``postgresql://...`` (or any RDB URL): many machines; Optuna's heartbeat fails the trials of
  dead workers on any machine.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

DEFAULT_STORAGE = "journal:.bench/optuna.journal"
HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 60


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


def open_storage(url: str) -> BaseStorage:
    """An Optuna storage for ``url`` (see the module docstring for the kinds)."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    if url.startswith("sqlite:"):
        return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)


def process_start_time(pid: int) -> str | None:
    """The start time (clock ticks since boot) of ``pid`` from /proc, or None if not running."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def worker_identity() -> dict[str, str]:
    pid = os.getpid()
    return {"worker_host": socket.gethostname(), "worker_pid": str(pid),
            "worker_start": process_start_time(pid) or ""}  # fmt: skip


def is_dead(trial: optuna.trial.FrozenTrial) -> bool:
    """A RUNNING trial of this host whose worker process is gone (or its pid reused)."""
    attrs = trial.user_attrs
    if attrs.get("worker_host") != socket.gethostname() or "worker_pid" not in attrs:
        return False
    started = process_start_time(int(attrs["worker_pid"]))
    return started is None or started != attrs.get("worker_start")


def fail_dead_trials(study: optuna.Study, storage: BaseStorage) -> list[optuna.trial.FrozenTrial]:
    """Mark the RUNNING trials of dead workers FAIL; returns them (so their runs can be closed)."""
    failed = []
    study_id = storage.get_study_id_from_name(study.study_name)
    if isinstance(storage, RDBStorage) and storage.heartbeat_interval:
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)
        after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        failed += [t for t in study.get_trials(deepcopy=False) if t.number in before - after]
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
