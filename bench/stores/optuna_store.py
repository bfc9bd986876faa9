"""Optuna storage by scale, and the bookkeeping the harness needs on top of it.

- ``journal:PATH`` (the default, ``journal:.bench/optuna.journal``): a journal file, safe for
  several processes on one host. It has no heartbeat, so a trial whose worker died (``kill -9``)
  is found here: it records its host, pid and the pid's start time, and a RUNNING trial whose
  process is gone on this host is failed by :func:`fail_dead_trials`. The file is written by
  :class:`SafeJournalFileBackend`: a write that fails (full disk) is rolled back, a record cut
  short by a crash is moved aside, a damaged record or a journal deleted under a running
  process is one :class:`StudyStoreError`.
- ``sqlite:///PATH``: one writer at a time (fine for one worker and resuming).
- ``postgresql://...`` (or any RDB URL): many machines. A worker records a heartbeat for the
  trial it runs (:func:`heartbeat`); a trial whose heartbeat stopped for the grace period
  (worker killed, machine gone) is failed by Optuna in :func:`fail_dead_trials`.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.storages.journal._file import get_lock_file
from optuna.trial import TrialState

from ..records import Attr
from .errors import EXIT_BAD_INPUT, StudyStoreError, os_error_text
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
        return JournalStorage(SafeJournalFileBackend(str(path)))
    if url.startswith("sqlite:"):
        return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return rdb_with_heartbeat(url, HEARTBEAT_SECONDS, GRACE_SECONDS)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class SafeJournalFileBackend(JournalFileBackend):
    """Optuna's journal file, written so that no crash or full disk leaves it unreadable.

    - :meth:`append_logs` writes the records whole or not at all: if the write or its ``fsync``
      fails (``ENOSPC``), the file is cut back to its size before the write and one
      :class:`StudyStoreError` names the journal and the OS error.
    - Bytes after the last newline (a record cut short: a process killed mid-write, a copy cut
      short) are moved aside into ``<journal>.torn-<time>`` and cut off, with a one-line
      warning, when the journal is opened and before each append (under the journal's lock, so
      never a record another process is writing); Optuna would ignore them, and the next
      append would glue a record to them and make the journal unreadable.
    - A line that is not a record (damage from outside) is a :class:`StudyStoreError` naming
      the line (exit 2), not a ``JSONDecodeError``.
    - The journal deleted or replaced (another inode, or shorter than what was read) while this process uses it is a
      :class:`StudyStoreError` at the next read or write; a deleted journal is never re-created
      by an append.
    """

    def __init__(self, file_path: str) -> None:
        super().__init__(file_path, lock_obj=JournalFileOpenLock(file_path))
        self._identity = _identity(os.stat(file_path))
        try:
            with get_lock_file(self._lock):
                self._repair_tail()
        except OSError:  # read-only place: reading still works (the cut record is skipped); appends fail
            pass

    def _error(self, detail: str, exit_code: int = 1) -> StudyStoreError:
        return StudyStoreError(self._file_path, detail, exit_code)

    def _gone(self) -> StudyStoreError:
        return self._error(
            "the file was deleted or replaced while this process was using it, so this process "
            "stopped; restore the journal (or start the study again in a fresh folder) and run "
            "`bench run` again"
        )

    def _check_identity(self, st: os.stat_result | None = None) -> None:
        if st is None:
            try:
                st = os.stat(self._file_path)
            except FileNotFoundError:
                raise self._gone() from None
        if _identity(st) != self._identity or st.st_size < max(self._log_number_offset.values()):
            raise self._gone()  # another inode, or shorter than what was read (its inode number reused)

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        """As Optuna's (records from ``log_number_from``; a last line without its newline is a
        record being written, left for later), but a whole line that is not a record is a
        :class:`StudyStoreError` naming its line number."""
        self._check_identity()
        start = log_number_from if log_number_from in self._log_number_offset else 0
        with open(self._file_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            pos = self._log_number_offset[start]
            f.seek(pos)
            for number, line in enumerate(f, start=start):
                if pos + len(line) > size or not line.endswith(b"\n"):
                    return  # written after we looked, or being written (or cut short: repaired before appending)
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if not isinstance(record, dict) or "op_code" not in record:
                    raise self._error(
                        f"line {number + 1} is not a journal record (the file was damaged); restore the journal "
                        "from a backup, or move it aside to start the study again",
                        EXIT_BAD_INPUT,
                    )
                pos += len(line)
                self._log_number_offset[number + 1] = pos
                if number >= log_number_from:
                    yield record

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        try:
            with get_lock_file(self._lock):
                self._check_identity()
                self._repair_tail()
                try:
                    fd = os.open(
                        self._file_path, os.O_WRONLY | os.O_APPEND
                    )  # no O_CREAT: never re-create a deleted journal
                except FileNotFoundError:
                    raise self._gone() from None
                try:
                    st = os.fstat(fd)
                    self._check_identity(st)
                    self._write_whole(fd, data, st.st_size)
                finally:
                    os.close(fd)
        except OSError as e:  # the lock or the repair could not be written
            raise self._error(
                f"writing failed ({os_error_text(e)}); free space (or fix the file system) and run "
                "the same command again"
            ) from e

    def _write_whole(self, fd: int, data: bytes, size_before: int) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as e:
            try:
                os.ftruncate(fd, size_before)
                os.fsync(fd)
                state = "the journal was rolled back to its last whole record"
            except OSError as e2:
                state = f"rolling the journal back failed too ({os_error_text(e2)}); its cut record is moved aside next time"
            raise self._error(
                f"writing failed ({os_error_text(e)}); {state}; free space (or fix the file system) "
                "and run the same command again"
            ) from e

    def _repair_tail(self) -> None:
        """Move the bytes after the last newline aside and cut them off (called under the lock)."""
        with open(self._file_path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            end = size
            while end > 0:
                step = min(end, 1 << 16)
                f.seek(end - step)
                chunk = f.read(step)
                i = chunk.rfind(b"\n")
                if i >= 0:
                    end = end - step + i + 1
                    break
                end -= step
            if end == size:
                return
            f.seek(end)
            torn = f.read(size - end)
            aside = f"{self._file_path}.torn-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            with open(aside, "wb") as out:
                out.write(torn)
                out.flush()
                os.fsync(out.fileno())
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
        print(
            f"bench: warning: Optuna journal {self._file_path} ended in a record cut short ({len(torn)} bytes: "
            f"a write interrupted by a crash or a full disk, or a copy cut short); moved them to {aside}",
            file=sys.stderr,
        )


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
        return RDBStorage(
            url, heartbeat_interval=interval, grace_period=grace, heartbeat_stale_trial_callback=StaleTrials(), **kw
        )


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
    return {
        Attr.WORKER_HOST: socket.gethostname(),
        Attr.WORKER_PID: str(pid),
        Attr.WORKER_START: process_start_time(pid) or "",
    }


def is_mine(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial whose recorded worker is this very process."""
    attrs, me = trial.user_attrs, worker_identity()
    return all(attrs.get(k) == v for k, v in me.items())


def is_dead(trial: optuna.trial.FrozenTrial) -> bool:
    """A RUNNING trial of this host whose worker process is gone (or its pid reused), or one
    that has had no worker identity for :data:`GRACE_SECONDS` since it was claimed (its worker
    died between claiming it and writing who it is)."""
    attrs = trial.user_attrs
    if Attr.WORKER_START not in attrs:  # identity still being written (start comes last), or never
        started = trial.datetime_start
        if started is None:
            return False
        if started.tzinfo is None:
            started = started.astimezone()
        return (datetime.now(timezone.utc) - started).total_seconds() > GRACE_SECONDS
    if attrs.get(Attr.WORKER_HOST) != socket.gethostname():
        return False  # another host's: its heartbeat tells (RDB storages)
    started = process_start_time(int(attrs[Attr.WORKER_PID]))
    return started is None or started != attrs.get(Attr.WORKER_START)


def fail_dead_trials(study: optuna.Study, storage: BaseStorage, own: bool = False) -> list[optuna.trial.FrozenTrial]:
    """Mark the RUNNING trials of dead workers FAIL (with ``own``, also those this process
    claimed: called when it runs none); returns them (so their runs can be closed)."""
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
        if is_dead(t) or (own and is_mine(t)):
            try:
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
                if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                    failed.append(t)
            except StudyStoreError:
                raise
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
        except StudyStoreError:
            raise
        except Exception:  # taken and finished by another worker
            continue
    return None
