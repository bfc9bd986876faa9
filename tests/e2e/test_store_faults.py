"""Store faults end to end, as a user meets them: `bench` in
subprocesses on the smoke study shape, a real Optuna journal and a real SQLite MLflow store; a
full disk is a small tmpfs the test mounts (as root; skipped otherwise). Each fault ends in one
line (exit 1 for a fault, 2 for a decision to take), never a traceback, never finished work run
again, and the same study runs to the end afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import ROOT, child_runs, write_study

pytestmark = pytest.mark.slow
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's bench, whatever the venv has installed
ENV.pop("MLFLOW_TRACKING_URI", None)
ENV.pop("BENCH_OPTUNA_STORAGE", None)
VIT = {"vit-pcm": {"pooling.kind": "max", "loss.pce_weight": 0.0}}


def tiny(tmp_path: Path, epochs: int = 1, seeds=(0,)) -> Path:
    """One variant, no stage 2, small data: the shortest study that still trains."""
    changes = {"base.segment.enabled": False, "base.train.epochs": epochs, "data.n_train": 32, "data.n_val": 16}
    return write_study(tmp_path / "s.yaml", changes, variants=VIT, seeds=list(seeds))


def bench(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=ENV
    )


def start(*args, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def one_line(stderr: str, start: str) -> str:
    """The one error line of a failed command (the progress display aside), checked."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("bench: error:")]
    assert len(lines) == 1 and lines[0].startswith(start), stderr
    return lines[0]


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def trial_runs(cwd: Path):
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return child_runs("sqlite:///mlflow.db", "smoke")[0]
    finally:
        os.chdir(old)


@contextmanager
def tmpfs(path: Path, size: str):
    if os.geteuid() != 0:
        pytest.skip("a full disk is a tmpfs mounted by the test: needs root")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill the tmpfs, then free ``leave`` bytes."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_disk_full_while_the_journal_is_written_is_one_line_and_the_study_resumes(tmp_path):
    """Case 1: the journal's disk fills mid-trial (its epoch records no longer fit)."""
    study = tiny(tmp_path, epochs=8)
    with tmpfs(tmp_path / "disk", "64k") as disk:
        storage = f"journal:{disk}/optuna.journal"
        filler = fill(disk, 4096)  # room for the study, its job and the trial's first records only
        r = bench("run", str(study), "--storage", storage, cwd=tmp_path)
        assert r.returncode == 1, r.stderr
        line = one_line(
            r.stderr,
            f"bench: error: Optuna journal {disk}/optuna.journal: writing failed ([Errno 28] No space left on device)",
        )
        assert "rolled back" in line
        assert (disk / "optuna.journal").read_bytes().endswith(b"\n")
        assert bench("ls", "--storage", storage, cwd=tmp_path).returncode == 0  # readable (was JSONDecodeError)
        filler.unlink()  # space freed
        r = bench("run", str(study), "--storage", storage, cwd=tmp_path)
        assert r.returncode == 0 and "all 1 trials done" in r.stderr, r.stderr
    runs = trial_runs(tmp_path)
    assert sorted(runs["status"]) == ["FAILED", "FINISHED"]  # the cut trial's run closed, the job run once to the end


def test_a_journal_cut_short_or_damaged_is_repaired_or_refused_never_run_again(tmp_path):
    """Case 2: a finished study's journal cut mid-record (repaired, warned once), cut at a line
    end (its last COMPLETE record lost: refused, nothing run again), damaged mid-file."""
    study = tiny(tmp_path, seeds=(0, 1))
    assert bench("run", str(study), cwd=tmp_path).returncode == 0
    journal = tmp_path / ".bench" / "optuna.journal"
    whole = journal.read_bytes()

    journal.write_bytes(whole + b'{"op_code":8,"worker_')  # a process killed mid-write, a copy cut short
    first, second = bench("ls", cwd=tmp_path), bench("ls", cwd=tmp_path)
    assert first.returncode == second.returncode == 0
    assert first.stderr.count("record cut short") == 1 and "record cut short" not in second.stderr
    r = bench("run", str(study), cwd=tmp_path)
    assert r.returncode == 0 and "all 2 trials done" in r.stderr, r.stderr

    lines = whole.splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-1]))  # cut at a line end: trial 1's COMPLETE record is lost
    r = bench("run", str(study), cwd=tmp_path)
    assert r.returncode == 2
    one_line(
        r.stderr,
        "bench: error: the Optuna storage journal:.bench/optuna.journal lost the results of 1 finished "
        "trial(s) of study 'smoke' (vit-pcm|seed=1: FINISHED in MLflow",
    )
    journal.write_bytes(whole)  # restored from a backup
    r = bench("run", str(study), cwd=tmp_path)
    assert r.returncode == 0 and "all 2 trials done" in r.stderr, r.stderr
    assert sorted(trial_runs(tmp_path)["status"]) == ["FINISHED", "FINISHED"]  # nothing ran twice

    journal.write_bytes(b"".join([*lines[:2], b'{"op_code":4,"wor{"op_code":8}\n', *lines[3:]]))  # damaged from outside
    for args in (("ls",), ("run", str(study)), ("worker", str(study), "--quiet")):
        r = bench(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        one_line(r.stderr, "bench: error: Optuna journal .bench/optuna.journal: line 3 is not a journal record")


def test_the_journal_deleted_mid_run_stops_the_run_in_one_line(tmp_path):
    """Case 5: it hung forever on "waiting for the trials other workers are running"."""
    study = tiny(tmp_path, epochs=20)
    journal = tmp_path / ".bench" / "optuna.journal"
    proc = start("run", str(study), cwd=tmp_path)
    try:
        wait_for(lambda: journal.exists() and b'"epoch":1' in journal.read_bytes(), "the first epoch")
        journal.unlink()
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1
    one_line(
        err,
        "bench: error: Optuna journal .bench/optuna.journal: the file was deleted or replaced while this "
        "process was using it",
    )
    assert not journal.exists()
    assert list(trial_runs(tmp_path)["status"]) == ["FAILED"]
    r = bench("run", str(tiny(tmp_path)), cwd=tmp_path)  # started again (shorter, as a new study would be)
    assert r.returncode == 0 and "all 1 trials done" in r.stderr, r.stderr


def test_a_worker_left_alone_by_a_killed_bench_run_runs_its_trial_again(tmp_path):
    """Case 11: the worker closed the killed run's trial and exited 0, silent. It now queues the
    dead worker's job again and resumes it from its checkpoint."""
    study = tiny(tmp_path, epochs=10, seeds=(0, 1))
    journal = tmp_path / ".bench" / "optuna.journal"
    proc = start("run", str(study), cwd=tmp_path)
    try:
        wait_for(lambda: journal.exists() and b'"epoch":1' in journal.read_bytes(), "the first epoch")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    r = bench("worker", str(study), "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "bench: trial 0: its worker died; queued again (retry 1 of 2)"
    runs = trial_runs(tmp_path)
    assert sorted(runs["status"]) == ["FAILED", "FINISHED", "FINISHED"]
    assert runs[runs["status"] == "FINISHED"]["tags.bench.resumed_from_epoch"].notna().any()
    r = bench("run", str(study), cwd=tmp_path)
    assert r.returncode == 0 and "all 2 trials done" in r.stderr, r.stderr


def test_a_worker_says_which_failed_trials_it_leaves_to_bench_run(tmp_path):
    # a learning rate of 1e30 blows the weights up at the first step: a NaN loss, deterministically
    changes = {"base.segment.enabled": False, "data.n_train": 32, "data.n_val": 16, "base.train.epochs": 2}
    study = write_study(tmp_path / "s.yaml", changes, variants={"vit-pcm": {**VIT["vit-pcm"], "train.lr": 1e30}})
    assert bench("run", str(study), cwd=tmp_path).returncode == 1
    r = bench("worker", str(study), "--quiet", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == f"bench: 1 trial(s) of study 'smoke' not done; `bench run {study}` retries them"


def test_disk_full_while_the_mlflow_store_is_created_leaves_no_half_migrated_store(tmp_path):
    """Case 4: mlflow.db was left half-migrated and every later run failed with
    `table _alembic_tmp_... already exists`."""
    study = tiny(tmp_path)
    with tmpfs(tmp_path / "disk", "256k") as disk:
        uri = f"sqlite:///{disk}/mlflow.db"
        r = bench("run", str(study), "--tracking-uri", uri, cwd=tmp_path)
        assert r.returncode == 1
        one_line(r.stderr, f"bench: error: MLflow store {uri} failed: ")
        assert not (disk / "mlflow.db").exists() and [p.name for p in disk.iterdir()] == ["mlflow.db.lock"]
        subprocess.run(["mount", "-o", "remount,size=30m", str(disk)], check=True)  # space freed
        r = bench("run", str(study), "--tracking-uri", uri, cwd=tmp_path)
        assert r.returncode == 0 and "all 1 trials done" in r.stderr, r.stderr
