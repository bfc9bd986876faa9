"""Hostile inputs and faults met as a user meets them: `bench` in a subprocess, one line on
stderr, exit 2 for bad input and 1 for a fault, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import ROOT, SMOKE


def bench(cwd, *argv, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None), env.pop("BENCH_OPTUNA_STORAGE", None)
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def one_line(r, code: int) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("bench: error: "), lines[0]
    return lines[0]


def test_report_on_a_garbage_mlflow_db_is_one_line_exit_1(tmp_path):
    """Random bytes as mlflow.db: an 81-line traceback before."""
    (tmp_path / "mlflow.db").write_bytes(os.urandom(100_000))
    line = one_line(bench(tmp_path, "report", str(SMOKE)), 1)
    assert (
        f"MLflow store sqlite:///{tmp_path / 'mlflow.db'} failed: cannot be read (DatabaseError: file is not a database)"
        in line
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


@pytest.mark.parametrize(
    "out,message",
    [
        ("afile", "--out afile: is a file, not a folder"),
        ("afile/sub/dir", "--out afile/sub/dir: is under afile, a file, not a folder"),
    ],
)
def test_report_out_a_file_is_one_line_exit_2(tmp_path, out, message):
    """`--out` an existing file or a path under one: a NotADirectoryError traceback before."""
    (tmp_path / "mlflow.db").write_bytes(b"")  # the --out check comes before the store is read
    (tmp_path / "afile").write_text("keep me\n")
    line = one_line(bench(tmp_path, "report", str(SMOKE), "--out", out), 2)
    assert message in line, line
    assert (tmp_path / "afile").read_text() == "keep me\n"


@pytest.fixture
def small_disk(tmp_path):
    """A 2.5 MB tmpfs (root only): room for the stores, not for a second stage-1 checkpoint."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.slow
def test_disk_full_while_a_checkpoint_is_written_names_the_checkpoint(small_disk):
    """Before: 'MLflow store ... failed: RuntimeError: basic_ios::clear' (the store's root cause
    was looked for in the trial's error), and a half-written .tmp filled the disk. Now the
    checkpoint's path and the OS error come first, exit 1; with room again the study completes."""
    (small_disk / "smoke.yaml").write_text(SMOKE.read_text())
    r = bench(small_disk, "run", "smoke.yaml", timeout=300)
    err = " ".join(r.stderr.split())  # rich wraps the summary at 80 columns
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "basic_ios" not in err and "unexpected pos" not in err, err
    assert (
        "CheckpointWriteError: checkpoint .bench/smoke/checkpoints/" in err
        and "cannot write (No space left on device)" in err
    ), err
    if "MLflow store" in err:
        assert err.index("CheckpointWriteError") < err.index("MLflow store"), err
    assert not list(small_disk.glob(".bench/**/*.tmp"))
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    r = bench(small_disk, "run", "smoke.yaml", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
