"""The scale-out path for real: Optuna on PostgreSQL, MLflow behind `mlflow server`, a
`bench run` and a `bench worker` (as a second machine would) sharing one study.

Needs TKP_BENCH_PG_URL (`.ci/run` starts a server with .ci/postgres.sh); skipped without it.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import optuna
import pytest
from helpers import child_runs, write_study

PG_URL = os.environ.get("TKP_BENCH_PG_URL")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(not PG_URL, reason="TKP_BENCH_PG_URL not set (see .ci/postgres.sh)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_run_and_remote_worker_share_a_postgres_study(tmp_path, mlflow_server):
    name = f"pg_{uuid.uuid4().hex[:8]}"
    study = write_study(tmp_path / "s.yaml", {"base.train.epochs": 3}, name=name, seeds=[0, 1, 2])
    args = ["--storage", PG_URL, "--tracking-uri", mlflow_server]
    machine_a = tmp_path / "a"
    machine_b = tmp_path / "b"
    machine_a.mkdir()
    machine_b.mkdir()
    run = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "run", str(study), *args],
        cwd=machine_a,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    storage = optuna.storages.RDBStorage(PG_URL)
    deadline = time.time() + 120
    while name not in optuna.get_all_study_names(storage) and time.time() < deadline:
        time.sleep(0.5)
    worker = subprocess.run(
        [sys.executable, "-m", "bench.cli", "worker", str(study), *args, "--quiet"],
        cwd=machine_b,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 0, out
    assert worker.returncode == 0, worker.stdout + worker.stderr

    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    assert sorted(t.user_attrs["job_key"] for t in trials) == sorted(
        f"{v}|seed={s}" for v in ("vit-pcm", "tkp-pcl") for s in range(3)
    )
    assert {t.state.name for t in trials} == {"COMPLETE"}
    children, parents = child_runs(mlflow_server, name)
    assert len(children) == 6 and set(children["status"]) == {"FINISHED"}
    assert len(parents) == 1
    assert not list(machine_a.glob("mlflow.db")) and not list(machine_b.glob("mlflow.db"))
