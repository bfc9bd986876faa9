"""DDP for real on the CPU: torchrun with 2 gloo processes trains each trial of a study."""

import os
import re
import subprocess
import sys

import pytest
from helpers import child_runs, write_study

pytestmark = pytest.mark.slow


def torchrun(study, cwd, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "bench.run.ddp",
            str(study),
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_torchrun_two_cpu_processes_run_a_study(tmp_path, monkeypatch):
    study = write_study(tmp_path / "s.yaml", {"base.train.num_threads": 1})
    r = torchrun(study, tmp_path, 600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    monkeypatch.chdir(tmp_path)
    children, parents = child_runs("sqlite:///mlflow.db", "smoke")
    assert len(children) == 2 and set(children["status"]) == {"FINISHED"}
    assert set(children["tags.bench.world_size"]) == {"2"}
    assert children["metrics.pseudo_miou"].between(0, 1).all() and children["metrics.seg_miou"].notna().all()
    assert parents.iloc[0]["status"] == "FINISHED"

    # the study file edited afterwards: rank 0 refuses it in one line, and the other rank stops too (no
    # hang); the only traceback is torchrun's own report that rank 0 exited with 2, none from a rank
    edited = write_study(tmp_path / "s.yaml", {"base.train.num_threads": 1, "base.train.lr": 0.02})
    r = torchrun(edited, tmp_path, 180)
    assert r.returncode != 0 and not re.search(r'bench/\w+\.py", line', r.stderr) and "exitcode  : 2" in r.stderr, (
        r.stderr[-3000:]
    )
    assert "bench: error: " in r.stderr and "train.lr: 0.02 here" in r.stderr, r.stderr[-3000:]
