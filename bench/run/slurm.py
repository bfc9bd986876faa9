"""The Slurm launcher: ``bench submit`` runs a study's workers as one Slurm job array.

The sequence (:func:`bench.cli.cmd_submit`): :func:`slurm_request` merges the study's
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
import sys
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
    pick = {
        k: flags.get(k) if flags.get(k) is not None else getattr(c, k)
        for k in ("partition", "time", "mem", "cpus_per_worker", "gpus_per_worker")
    }
    if workers < 1:
        raise SubmitError("--workers must be >= 1")
    if (pick["gpus_per_worker"] or 0) > 1:
        raise SubmitError("--gpus-per-worker > 1 (data-parallel ranks as Slurm tasks) is not supported yet; use 0 or 1")
    return SlurmRequest(
        workers,
        pick["partition"],
        time_minutes(pick["time"]) if pick["time"] else None,
        pick["mem"],
        pick["cpus_per_worker"] or 1,
        pick["gpus_per_worker"] or 0,
        {**c.slurm, **_key_values(slurm_items)},
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
        ntasks_per_node=1,
        cpus_per_task=req.cpus,
        setup=[f"export PYTHONPATH={shlex.quote(path)}"],
        stderr_to_stdout=True,
    )
    params.update({k: v for k, v in (("partition", req.partition), ("mem", req.mem)) if v})
    params["time"] = req.time_min  # None: the partition's default (submitit's own is 5 minutes)
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


def worker_command(study_path: str, storage_url: str, tracking_uri: str, threads: int) -> list[str]:
    """What each task runs: one ``bench worker`` on the study (the one worker loop)."""
    return [
        sys.executable,
        "-m",
        "bench.cli",
        "worker",
        str(Path(study_path).resolve()),
        "--storage",
        storage_url,
        "--tracking-uri",
        tracking_uri,
        "--threads",
        str(threads),
        "--quiet",
    ]


def submit(h, ex, req: SlurmRequest, tracking_uri: str) -> dict[str, Any]:
    """Submit the array (N tasks of ``bench worker``) and record it on the Optuna study; returns
    what was recorded (job id, tasks, submitted, log folder)."""
    import submitit

    cmd = worker_command(h.path, h.storage_url, tracking_uri, req.cpus)
    try:
        with ex.batch():
            jobs = [ex.submit(submitit.helpers.CommandFunction(cmd, cwd=os.getcwd())) for _ in range(req.workers)]
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
