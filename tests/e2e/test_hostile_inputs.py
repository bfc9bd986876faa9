"""Hostile inputs and faults met as a user meets them: `bench` in a subprocess, one line on
stderr, exit 2 for bad input and 1 for a fault, never a traceback (issue 19)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import ROOT, SMOKE


def bench(cwd, *argv, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None), env.pop("BENCH_OPTUNA_STORAGE", None)
    return subprocess.run([sys.executable, "-m", "bench.cli", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def one_line(r, code: int) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("bench: error: "), lines[0]
    return lines[0]


def test_report_on_a_garbage_mlflow_db_is_one_line_exit_1(tmp_path):
    """Random bytes as mlflow.db: an 81-line traceback before."""
    (tmp_path / "mlflow.db").write_bytes(os.urandom(100_000))
    line = one_line(bench(tmp_path, "report", str(SMOKE)), 1)
    assert f"MLflow store sqlite:///{tmp_path / 'mlflow.db'} failed: cannot be read (DatabaseError: file is not a database)" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


@pytest.mark.parametrize("out,message", [("afile", "--out afile: is a file, not a folder"),
                                         ("afile/sub/dir", "--out afile/sub/dir: is under afile, a file, not a folder")])  # fmt: skip
def test_report_out_a_file_is_one_line_exit_2(tmp_path, out, message):
    """`--out` an existing file or a path under one: a NotADirectoryError traceback before."""
    (tmp_path / "mlflow.db").write_bytes(b"")  # the --out check comes before the store is read
    (tmp_path / "afile").write_text("keep me\n")
    line = one_line(bench(tmp_path, "report", str(SMOKE), "--out", out), 2)
    assert message in line, line
    assert (tmp_path / "afile").read_text() == "keep me\n"
