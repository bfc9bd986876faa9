"""DDP for real on the CPU: torchrun with 2 gloo processes trains each trial of a study."""

import os
import subprocess
import sys

import pytest

from helpers import child_runs, write_study

pytestmark = pytest.mark.slow


def test_torchrun_two_cpu_processes_run_a_study(tmp_path):
    study = write_study(tmp_path / "s.yaml", {"base.train.num_threads": 1})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "bench.train_trial", str(study)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    os.chdir(tmp_path)
    children, parents = child_runs("sqlite:///mlflow.db", "smoke")
    assert len(children) == 2 and set(children["status"]) == {"FINISHED"}
    assert set(children["tags.bench.world_size"]) == {"2"}
    assert children["metrics.pseudo_miou"].between(0, 1).all() and children["metrics.seg_miou"].notna().all()
    assert parents.iloc[0]["status"] == "FINISHED"
