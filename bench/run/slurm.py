"""The Slurm launcher: ``bench submit`` runs a study's workers as one Slurm job array.

The sequence (:func:`bench.cli.running.cmd_submit`): :func:`slurm_request` merges the study's
``cluster:`` section with the flags and :func:`check_request` refuses what cannot work (no
``sbatch``, a store file that other nodes cannot share safely, zero workers) before anything is
opened; :func:`preflight` asks Slurm itself (``sbatch --test-only``, the same settings) so an
unknown partition or a refused request is Slurm's own message, still before anything is
written; then the one startup sequence (:func:`bench.run.startup.start` and
:func:`bench.run.queue.prepare`: stores, parent run, enqueued jobs, once); then :func:`submit`
sends one array of N tasks through submitit, each running ``python -m bench.cli worker`` (the
one worker loop) with this checkout on its ``PYTHONPATH``, and records the array on the Optuna
study (:data:`bench.records.StudyAttr.SLURM_ARRAYS`), where ``bench ls`` finds it
(:func:`array_counts`, from ``squeue``).

Light at import (no torch, no submitit): ``bench ls`` imports it.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench

from ..records import StudyAttr
from ..study import StudyError
from ..study.schema import SLURM_TIME
from ..study.urls import scheme
from .command import worker_command

#: the Slurm states of a task that has not started, and of one that runs (``squeue -o %T``)
PENDING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED")
RUNNING = ("RUNNING", "CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING")
#: why a store file is refused for an array (optuna#815, #820, #5138)
FILE_STORE_WHY = (
    "SQLite and journal files on a network filesystem corrupt or lock when several nodes write them; "
    "use PostgreSQL (or another database server)"
)
SERVER_MLFLOW = ("http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")


class SubmitError(StudyError):
    """``bench submit`` cannot submit: one line, exit 2, nothing submitted."""


#: the pre-timeout signal's default lead on the time limit, and the part of it a worker may
#: take to reach its epoch's end (the rest: closing the trial, requeueing)
SIGNAL_DELAY_S = 120
GRACE_MARGIN_S = 20


@dataclass
class SlurmRequest:
    """What each of the array's tasks asks Slurm for."""

    workers: int
    partition: str | None = None
    time_min: int | None = None
    mem: str | None = None
    cpus: int = 1
    gpus: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    signal_delay_s: int = SIGNAL_DELAY_S

    @property
    def ranks(self) -> int:
        """Data-parallel ranks of each worker: one per GPU where it asks for more than one."""
        return max(1, self.gpus)


def time_minutes(value: str) -> int:
    """A Slurm time limit (MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes, rounded up."""
    if not SLURM_TIME.match(value):
        raise SubmitError(f"--time {value!r}: a Slurm time limit is MINUTES, HH:MM:SS or D-HH:MM:SS")
    days, _, rest = value.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        h, m, s = (parts + [0, 0])[:3]
    else:
        h, m, s = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
    return int(days or 0) * 1440 + h * 60 + m + math.ceil(s / 60)


def _key_values(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SubmitError(f"--slurm {item!r}: use KEY=VALUE, an sbatch option without its dashes (qos=high)")
        out[key.strip().lstrip("-")] = value
    return out


def slurm_request(study, workers: int, flags: dict[str, Any], slurm_items: list[str]) -> SlurmRequest:
    """The study's ``cluster:`` settings, overridden by the flags that were given."""
    c = study.cluster
    names = ("partition", "time", "mem", "cpus_per_worker", "gpus_per_worker", "signal_delay")
    pick = {k: flags.get(k) if flags.get(k) is not None else getattr(c, k) for k in names}
    if workers < 1:
        raise SubmitError("--workers must be >= 1")
    if pick["signal_delay"] is not None and pick["signal_delay"] < 10:
        raise SubmitError("--signal-delay must be >= 10 seconds")
    return SlurmRequest(
        workers,
        pick["partition"],
        time_minutes(pick["time"]) if pick["time"] else None,
        pick["mem"],
        pick["cpus_per_worker"] or 1,
        pick["gpus_per_worker"] or 0,
        {**c.slurm, **_key_values(slurm_items)},
        pick["signal_delay"] or SIGNAL_DELAY_S,
    )


def check_stores(storage_url: str, tracking_uri: str, local_ok: bool) -> None:
    """Refuse store files for an array unless ``local_ok`` (all its tasks on this one node)."""
    if local_ok:
        return
    if scheme(storage_url) in ("journal", "sqlite") or (scheme(storage_url) or "").startswith("sqlite+"):
        raise SubmitError(f"Optuna storage {storage_url}: {FILE_STORE_WHY}; --local-ok if every task runs on this node")
    s = (scheme(tracking_uri) or "file").split("+", 1)[0]
    if s not in SERVER_MLFLOW:
        raise SubmitError(
            f"MLflow tracking URI {tracking_uri}: not a tracking server or database server ({FILE_STORE_WHY}, "
            "or an MLflow server: mlflow server --backend-store-uri postgresql://...); --local-ok if every "
            "task runs on this node"
        )


def check_request(storage_url: str, tracking_uri: str, local_ok: bool) -> None:
    """What is wrong before Slurm is asked anything: no Slurm here, or stores the nodes cannot share."""
    if shutil.which("sbatch") is None:
        raise SubmitError(
            "no Slurm on this machine: sbatch not found (run bench submit on a login node of the cluster)"
        )
    check_stores(storage_url, tracking_uri, local_ok)


#: a limit for a partition without one ("infinite"): a year, in minutes
NO_LIMIT_MIN = 525_600


def partition_minutes(partition: str | None) -> int:
    """The time limit a job gets on ``partition`` (Slurm's default partition where None) when
    it asks for none: the partition's default time, else its maximum. submitit must know the
    limit to tell a time-out from a preemption when the pre-timeout signal comes."""
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%P|%L|%l"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return NO_LIMIT_MIN
    for line in r.stdout.splitlines():
        name, _, limits = line.strip().partition("|")
        if (partition is None and name.endswith("*")) or name.rstrip("*") == partition:
            for value in limits.split("|"):
                if value not in ("n/a", "infinite", "UNLIMITED", "") and SLURM_TIME.match(value):
                    return time_minutes(value)
            return NO_LIMIT_MIN
    return NO_LIMIT_MIN  # an unknown partition: Slurm's own refusal follows (preflight)


def log_folder(study_name: str) -> Path:
    """Where submitit writes the array's script and each task's log and result
    (``<job>_<task>_0_log.out``)."""
    return (Path(".bench") / study_name / "slurm").resolve()


def executor(req: SlurmRequest, study_name: str):
    """A submitit ``SlurmExecutor`` with the request's settings; every task runs with this
    checkout first on its ``PYTHONPATH``, so a fresh clone needs no install on the nodes."""
    import shlex

    import submitit

    ex = submitit.SlurmExecutor(folder=log_folder(study_name))
    root = str(Path(bench.__file__).resolve().parent.parent)
    path = os.pathsep.join(dict.fromkeys([root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]))
    params: dict[str, Any] = dict(
        job_name=f"bench-{study_name}",
        ntasks_per_node=req.ranks,
        cpus_per_task=req.cpus,
        signal_delay_s=req.signal_delay_s,
        setup=[f"export PYTHONPATH={shlex.quote(path)}"],
        stderr_to_stdout=True,
    )
    params.update({k: v for k, v in (("partition", req.partition), ("mem", req.mem)) if v})
    params["time"] = req.time_min or partition_minutes(req.partition)
    if req.gpus:
        params["gpus_per_node"] = req.gpus
    ex.update_parameters(**params, additional_parameters=dict(req.extra))
    return ex


def _one_line(text: str) -> str:
    """Slurm's own message: its last ``error:`` line (or its last line)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["(no message)"])[-1]


def preflight(ex, workers: int) -> None:
    """``sbatch --test-only`` with the array's settings: Slurm checks the partition, limits and
    resources and submits nothing; a refusal is a :class:`SubmitError` with Slurm's message."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = {**ex.parameters, "map_count": workers if workers > 1 else None}
    script = _make_sbatch_string(command="true", folder=ex.folder, **params)
    r = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise SubmitError(f"Slurm refused the request: {_one_line(r.stderr + r.stdout)}")


class WorkerTask:
    """One task of the array: runs the worker command and returns its exit code; a worker
    that fails (exit code 1 or 2) fails the Slurm task, one stopped by a signal (128 + its
    number: ``scancel``, a requeue) leaves that to Slurm.

    Checkpointable the submitit way: on Slurm's pre-timeout signal (``--signal=USR2@<delay>``)
    submitit calls :meth:`checkpoint` in the task's first process; it passes the signal on to the
    worker (which stops at its epoch's end and queues its trial again, :mod:`bench.signals`),
    waits up to ``grace_s`` for it (then SIGTERM: it stops at once, its trial queued again from
    the last epoch's checkpoint), and hands submitit the same task to requeue."""

    def __init__(self, cmd: list[str], cwd: str, grace_s: float):
        self.cmd, self.cwd, self.grace_s = cmd, cwd, grace_s
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"cmd": self.cmd, "cwd": self.cwd, "grace_s": self.grace_s, "_proc": None}

    def __call__(self) -> int:
        self._proc = subprocess.Popen(self.cmd, cwd=self.cwd)
        while (code := self._proc.poll()) is None:  # polled, not waited: checkpoint() may wait meanwhile
            time.sleep(1.0)
        if 0 < code < 128:  # failed trials or bad input (the worker said which); a signal's end is Slurm's to say
            raise RuntimeError(f"{' '.join(self.cmd[2:4])} exited with code {code}")
        return code

    def checkpoint(self, *args, **kwargs):
        import signal

        from submitit.helpers import DelayedSubmission

        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGUSR2)  # Slurm may have sent it too: the worker heeds the first
            if not _ended(proc, self.grace_s):
                proc.terminate()
                _ended(proc, 60.0)
        return DelayedSubmission(WorkerTask(self.cmd, self.cwd, self.grace_s))


def _ended(proc: subprocess.Popen, timeout: float) -> bool:
    """Whether ``proc`` ends within ``timeout`` seconds (polled: this runs in a signal handler
    that may have interrupted a poll of the same process)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def submit(h, ex, req: SlurmRequest, tracking_uri: str) -> dict[str, Any]:
    """Submit the array (N tasks of ``bench worker``) and record it on the Optuna study; returns
    what was recorded (job id, tasks, submitted, log folder)."""
    import submitit

    cmd = worker_command(h.path, h.storage_url, tracking_uri, req.cpus, req.ranks)
    task = WorkerTask(cmd, os.getcwd(), max(5.0, req.signal_delay_s - GRACE_MARGIN_S))
    try:
        with ex.batch():
            jobs = [ex.submit(task) for _ in range(req.workers)]
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as e:
        raise SubmitError(f"Slurm refused the array: {_one_line(str(e))}") from None
    job_id = jobs[0].job_id.split("_", 1)[0]
    info = {
        "job_id": job_id,
        "tasks": req.workers,
        "submitted": time.strftime("%Y-%m-%d %H:%M:%S"),
        "log_folder": str(ex.folder),
    }
    arrays = h.optuna_study.user_attrs.get(StudyAttr.SLURM_ARRAYS, [])
    h.optuna_study.set_user_attr(StudyAttr.SLURM_ARRAYS, [*arrays, info])
    return info


def queue_states() -> dict[str, Counter] | None:
    """Slurm's queue: each job (array) id's tasks by state; None where ``squeue`` fails."""
    try:
        r = subprocess.run(["squeue", "-h", "-r", "-o", "%F|%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    out: dict[str, Counter] = {}
    for line in r.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        out.setdefault(job, Counter())[state] += 1
    return out


def array_counts(arrays: list[dict[str, Any]], queue: dict[str, Counter] | None) -> list[dict[str, Any]]:
    """Per submitted array: its tasks pending, running and ended (left Slurm's queue: done,
    failed or cancelled); ``?`` where Slurm could not be asked."""
    rows = []
    for a in arrays:
        if queue is None:
            counts = dict.fromkeys(("pending", "running", "ended"), "?")
        else:
            c = queue.get(str(a["job_id"]), Counter())
            pending, running = sum(c[s] for s in PENDING), sum(c[s] for s in RUNNING)
            counts = {"pending": pending, "running": running, "ended": max(0, int(a["tasks"]) - pending - running)}
        rows.append({**a, **counts})
    return rows
