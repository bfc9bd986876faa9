"""`bench submit` on a real Slurm: the smoke study as a job array on PostgreSQL (Optuna) and a
SQLite MLflow store (`--local-ok`: one node), a task cancelled mid-trial, the pre-timeout signal
(checkpoint, requeue, resume), two ranks per worker (gloo on the CPU; the node lists two GPUs as
a generic resource, .ci/slurm.sh), a worker killed outright, and the bad inputs.

Needs a running Slurm (TKP_BENCH_SLURM=1: `.ci/run` starts one with .ci/slurm.sh) and
TKP_BENCH_PG_URL (.ci/postgres.sh); skipped without them, failed without them in CI (CI=true).
"""

import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pytest
from helpers import child_runs, write_study

PG_URL = os.environ.get("TKP_BENCH_PG_URL")
pytestmark = [pytest.mark.slow, pytest.mark.postgres]
LOCK = Path(tempfile.gettempdir()) / "tkp-bench-slurm-tests.lock"


@pytest.fixture(autouse=True)
def slurm():
    """Skip where Slurm or PostgreSQL is missing (a developer's shell); fail in CI."""
    missing = []
    if not os.environ.get("TKP_BENCH_SLURM"):
        missing.append("TKP_BENCH_SLURM not set (start a one-node Slurm with .ci/slurm.sh)")
    elif subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        missing.append("sinfo fails: no Slurm controller running (.ci/slurm.sh)")
    if not PG_URL:
        missing.append("TKP_BENCH_PG_URL not set (see .ci/postgres.sh)")
    if missing:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)("; ".join(missing))
    # one test at a time on the node (the tests run in several processes): each reads the queue whole
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def bench(*args, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def run_submit(study: Path, cwd: Path, *flags, env: dict | None = None) -> subprocess.CompletedProcess:
    """``bench submit`` on the test's stores (PostgreSQL, a local SQLite MLflow store)."""
    return bench(
        "submit",
        study,
        "--storage",
        PG_URL,
        "--tracking-uri",
        "sqlite:///mlflow.db",
        "--local-ok",
        *flags,
        cwd=cwd,
        env=env,
    )


def submit(study: Path, cwd: Path, *flags, env: dict | None = None) -> str:
    """``bench submit``; returns the array's job id."""
    r = run_submit(study, cwd, *flags, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"submitted Slurm job (\d+)", r.stdout)
    assert m, r.stdout
    assert "logs: " in r.stdout and "MLflow: " in r.stdout
    return m.group(1)


def queued(job_id: str) -> list[str]:
    """The job's tasks still in Slurm's queue, as ``<id>_<task> <state>``."""
    out = subprocess.run(["squeue", "-h", "-r", "-j", job_id, "-o", "%i %T"], capture_output=True, text=True).stdout
    return out.split("\n") if out.strip() else []


def wait_gone(job_id: str, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while queued(job_id):
        if time.time() > deadline:
            subprocess.run(["scancel", job_id])
            pytest.fail(f"Slurm job {job_id} still queued after {timeout} s: {queued(job_id)}")
        time.sleep(2)


def trials(name: str):
    return optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(PG_URL)).get_trials()


def test_array_runs_every_trial_once_and_tags_where(tmp_path):
    name = f"slurm_{uuid.uuid4().hex[:8]}"
    study = write_study(tmp_path / "s.yaml", name=name)
    # Slurm passes the submitting shell's environment on: system metrics every second (a smoke trial is short)
    job = submit(study, tmp_path, "--workers", 2, env={**os.environ, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"})
    wait_gone(job)

    ts = trials(name)
    assert sorted(t.user_attrs["job_key"] for t in ts) == ["tkp-pcl|seed=0", "vit-pcm|seed=0"]
    assert {t.state.name for t in ts} == {"COMPLETE"}
    children, parents = child_runs(f"sqlite:///{tmp_path}/mlflow.db", name)
    assert len(children) == 2 and set(children["status"]) == {"FINISHED"}
    assert len(parents) == 1 and set(parents["status"]) == {"FINISHED"}
    assert set(children["tags.bench.slurm_job_id"]) == {job}
    assert set(children["tags.bench.slurm_array_task_id"]) <= {"0", "1"}
    assert set(children["tags.bench.slurm_node"]) == {socket.gethostname()}
    # MLflow's system metrics, on under Slurm, named after the node
    assert children[f"metrics.system/{socket.gethostname()}/cpu_utilization_percentage"].notna().all()

    ls = bench("ls", "--storage", PG_URL, cwd=tmp_path, env={**os.environ, "COLUMNS": "250"})
    assert ls.returncode == 0, ls.stderr
    row = next(line for line in ls.stdout.splitlines() if f" {job} " in line and name in line)
    assert re.search(rf"{job}\s*│\s*2\s*│\s*0\s*│\s*0\s*│\s*2\s*│", row), row  # tasks, pending, running, ended

    again = run_submit(study, tmp_path, "--workers", 2)
    assert again.returncode == 0 and "all 2 trials done; nothing submitted" in again.stdout, again.stdout + again.stderr
    arrays = optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(PG_URL)).user_attrs["slurm_arrays"]
    assert [a["job_id"] for a in arrays] == [job]


def _running_with_epochs(name: str, n: int) -> bool:
    running = [t for t in trials(name) if t.state.name == "RUNNING"]
    return len(running) == n and all(t.user_attrs.get("epoch", 0) >= 1 for t in running)


def _wait_running(name: str, n: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not _running_with_epochs(name, n):
        assert time.time() < deadline, f"{n} trial(s) never ran: {[(t.number, t.state.name) for t in trials(name)]}"
        time.sleep(1)


def _finished_once(name: str, tmp_path: Path):
    """Every job COMPLETE once, one FINISHED run each; returns (runs, parents)."""
    ts = trials(name)
    done = sorted(t.user_attrs["job_key"] for t in ts if t.state.name == "COMPLETE")
    assert done == ["tkp-pcl|seed=0", "vit-pcm|seed=0"], [
        (t.number, t.state.name, t.user_attrs.get("error")) for t in ts
    ]
    children, parents = child_runs(f"sqlite:///{tmp_path}/mlflow.db", name)
    finished = children[children["status"] == "FINISHED"]
    assert sorted(finished["tags.bench.job_key"]) == done  # nothing twice
    assert len(parents) == 1 and set(parents["status"]) == {"FINISHED"}
    return children, finished


def test_cancelled_task_s_trial_is_resumed_by_the_other_task(tmp_path):
    name = f"slurm_cancel_{uuid.uuid4().hex[:8]}"
    study = write_study(tmp_path / "s.yaml", {"base.train.epochs": 40}, name=name)
    job = submit(study, tmp_path, "--workers", 2)
    _wait_running(name, 2)
    subprocess.run(["scancel", f"{job}_1"], check=True)
    wait_gone(job)

    children, finished = _finished_once(name, tmp_path)
    killed = children[children["status"] == "KILLED"]
    assert list(killed["tags.bench.slurm_array_task_id"]) == ["1"]
    assert killed["tags.bench.error"].iloc[0] == "interrupted (SIGTERM)"
    resumed = finished[finished["tags.bench.job_key"] == killed["tags.bench.job_key"].iloc[0]]
    assert list(resumed["tags.bench.slurm_array_task_id"]) == ["0"]  # the task left took it over
    assert int(resumed["tags.bench.resumed_from_epoch"].iloc[0]) >= 1  # from its checkpoint
    again = run_submit(study, tmp_path, "--workers", 1)
    assert again.returncode == 0 and "nothing submitted" in again.stdout, again.stdout + again.stderr


def test_a_worker_killed_outright_has_its_trial_retried_by_the_other_task(tmp_path):
    """``kill -9`` of one task's worker (what a lost node or the kernel's OOM killer does: no
    signal handler runs): the other task closes its trial and resumes the job from its checkpoint."""
    name = f"slurm_kill_{uuid.uuid4().hex[:8]}"
    study = write_study(tmp_path / "s.yaml", {"base.train.epochs": 40}, name=name)
    job = submit(study, tmp_path, "--workers", 2)
    _wait_running(name, 2)
    victim = next(t for t in trials(name) if t.state.name == "RUNNING")
    os.kill(int(victim.user_attrs["worker_pid"]), signal.SIGKILL)
    wait_gone(job)

    children, finished = _finished_once(name, tmp_path)
    dead = children[children["status"] == "FAILED"]
    assert list(dead["tags.bench.error"]) == ["worker died"] and list(dead["tags.bench.trial"]) == [str(victim.number)]
    retried = finished[finished["tags.bench.job_key"] == victim.user_attrs["job_key"]]
    assert int(retried["tags.bench.resumed_from_epoch"].iloc[0]) >= 1  # from its checkpoint
    assert retried["tags.bench.slurm_array_task_id"].iloc[0] != dead["tags.bench.slurm_array_task_id"].iloc[0]
    logs = "".join(p.read_text() for p in (tmp_path / ".bench" / name / "slurm").glob(f"{job}_*_log.out"))
    assert f"bench: trial {victim.number}: its worker died; queued again (retry 1 of 2)" in logs, logs[-3000:]


def test_pre_timeout_signal_checkpoints_requeues_and_resumes(tmp_path):
    name = f"slurm_requeue_{uuid.uuid4().hex[:8]}"
    study = write_study(tmp_path / "s.yaml", {"base.train.epochs": 40}, name=name)
    job = submit(study, tmp_path, "--workers", 1)
    _wait_running(name, 1)
    # what Slurm sends `--signal-delay` seconds before the time limit (submitit's own test hook does the same)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_gone(job)

    children, finished = _finished_once(name, tmp_path)
    killed = children[children["status"] == "KILLED"]
    assert list(killed["tags.bench.error"]) == ["interrupted (SIGUSR2)"]
    resumed = finished[finished["tags.bench.job_key"] == killed["tags.bench.job_key"].iloc[0]]
    assert int(resumed["tags.bench.resumed_from_epoch"].iloc[0]) >= 1  # from its checkpoint
    assert set(children["tags.bench.slurm_job_id"]) == {job}  # the same job, requeued by submitit
    log = (tmp_path / ".bench" / name / "slurm" / f"{job}_0_log.out").read_text()
    assert "stopping at the end of this epoch" in log and "Requeued job" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_two_gpus_per_worker_train_each_trial_as_two_slurm_tasks(tmp_path):
    name = f"slurm_ddp_{uuid.uuid4().hex[:8]}"
    study = write_study(tmp_path / "s.yaml", name=name)
    job = submit(study, tmp_path, "--workers", 1, "--gpus-per-worker", 2)
    wait_gone(job)
    children, finished = _finished_once(name, tmp_path)
    assert len(children) == 2 and set(children["tags.bench.world_size"]) == {"2"}  # one run per trial, 2 ranks
    log = (tmp_path / ".bench" / name / "slurm" / f"{job}_0_log.out").read_text()
    assert "Traceback" not in log, log[-3000:]


def test_bad_inputs_are_one_line_and_submit_nothing(tmp_path):
    name = f"slurm_bad_{uuid.uuid4().hex[:8]}"
    study = write_study(tmp_path / "s.yaml", name=name)
    before = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout
    pg = ["--storage", PG_URL, "--tracking-uri", "sqlite:///mlflow.db"]
    cases = [
        (["--workers", 0, *pg, "--local-ok"], None, "--workers must be >= 1"),
        (["--workers", 2, "--tracking-uri", "http://127.0.0.1:5000"], None, "Optuna storage journal:"),
        (["--workers", 2, *pg], None, "MLflow tracking URI sqlite:"),
        (["--workers", 2, *pg, "--local-ok", "--partition", "no-such-partition"], None, "Slurm refused the request: "),
        (["--workers", 2, *pg, "--local-ok", "--mem", "100000G"], None, "Slurm refused the request: "),
        (["--workers", 2, *pg, "--local-ok"], {**os.environ, "PATH": str(tmp_path)}, "sbatch not found"),
    ]
    for flags, env, expected in cases:
        r = bench("submit", study, *flags, cwd=tmp_path, env=env, timeout=120)
        assert r.returncode == 2, (flags, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bench: error: ") and expected in lines[0], (flags, r.stderr)
    after = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout
    assert set(after.split()) <= set(before.split())
    assert name not in optuna.get_all_study_names(optuna.storages.RDBStorage(PG_URL))
