"""Trial integrity end to end: `bench` in subprocesses on the smoke
shape, real Optuna journal, real MLflow SQLite store. Slow: each test trains a little."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from helpers import child_runs, write_study

pytestmark = pytest.mark.slow
URI = "sqlite:///mlflow.db"


# one variant, no stage 2: the shortest study that still trains, checkpoints and logs
def short(**changes) -> dict:
    return {
        "base.segment.enabled": False,
        "variants": {"vit-pcm": {"pooling.kind": "max", "loss.pce_weight": 0.0}},
        **changes,
    }


def bench(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )


def start(*args, cwd, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def trials(cwd) -> list[optuna.trial.FrozenTrial]:
    journal = cwd / ".bench" / "optuna.journal"
    if not journal.exists():
        return []
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    try:
        return optuna.load_study(study_name="smoke", storage=storage).get_trials()
    except KeyError:
        return []


def wait_for(condition, what: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("bench: error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_killed_trial_edited_file_refused_then_corrupt_checkpoint_restarts_on_another_device(tmp_path, monkeypatch):
    study = write_study(tmp_path / "s.yaml", short(**{"base.train.epochs": 4}))
    proc = start("run", str(study), cwd=tmp_path)
    ckpts = tmp_path / ".bench" / "smoke" / "checkpoints"
    wait_for(lambda: any(ckpts.glob("*.ckpt")) or proc.poll() is not None, "a checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (ckpt,) = ckpts.glob("*.ckpt")
    before = [(t.number, t.state) for t in trials(tmp_path)]
    assert before == [(0, optuna.trial.TrialState.RUNNING)]

    # case 1 and 2: the killed trial's variant edited -> refused, one line, nothing enqueued
    edited = write_study(tmp_path / "edited.yaml", short(**{"base.train.epochs": 4, "variants.vit-pcm.train.lr": 0.02}))
    r = bench("run", str(edited), cwd=tmp_path)
    assert r.returncode == 2
    assert one_line_error(r.stderr) == (
        f"bench: error: {edited}: variants.vit-pcm.train.lr: 0.02 here, 0.002 in the study's trial 0 "
        "(rename the study to run another configuration)"
    )
    assert [(t.number, t.state) for t in trials(tmp_path)] == before
    # case 3: a worker with an edited copy, or with a renamed variant, refuses before claiming
    r = bench("worker", str(edited), cwd=tmp_path)
    assert r.returncode == 2 and "variants.vit-pcm.train.lr: 0.02 here" in one_line_error(r.stderr)
    renamed = write_study(
        tmp_path / "renamed.yaml",
        short(**{"base.train.epochs": 4, "variants": {"max": {"pooling.kind": "max", "loss.pce_weight": 0.0}}}),
    )
    r = bench("worker", str(renamed), cwd=tmp_path)
    assert r.returncode == 2 and "ran job 'vit-pcm|seed=0', which this file does not define" in one_line_error(r.stderr)
    assert [(t.number, t.state) for t in trials(tmp_path)] == before

    # case 5 and 8: the checkpoint is corrupt, and the study moves to other execution settings
    ckpt.write_bytes(os.urandom(1000))
    moved = write_study(
        tmp_path / "moved.yaml",
        short(
            **{
                "base.train.epochs": 4,
                "base.train.device": "cpu",
                "base.train.num_threads": 1,
                "base.pseudo.workers": 1,
            }
        ),
    )
    r = bench("run", str(moved), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    squashed = "".join(r.stderr.split())  # the progress display wraps what is printed meanwhile
    assert "".join(f"bench: warning: unreadable checkpoint {ckpt}".split()) in squashed and "Traceback" not in r.stderr
    assert len(list(ckpts.glob("*.ckpt.corrupt-*"))) == 1
    monkeypatch.chdir(tmp_path)
    children, parents = child_runs(URI, "smoke")
    done = children[children["status"] == "FINISHED"].iloc[0]
    assert "unreadable checkpoint" in done["tags.bench.checkpoint_discarded"]
    assert "tags.bench.resumed_from_epoch" not in children or children["tags.bench.resumed_from_epoch"].isna().all()
    assert done["params.train.device"] == "cpu" and done["params.train.lr"] == "0.002"
    assert done["tags.bench.config_hash"] == trials(tmp_path)[-1].user_attrs["config_hash"]
    assert sorted(children["status"]) == ["FAILED", "FINISHED"] and parents.iloc[0]["status"] == "FINISHED"


def test_two_runs_started_together_in_a_fresh_folder(tmp_path, monkeypatch):
    study = write_study(tmp_path / "s.yaml", {"base.segment.enabled": False})
    procs = [start("run", str(study), cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    monkeypatch.chdir(tmp_path)
    children, parents = child_runs(URI, "smoke")
    assert len(parents) == 1 and parents.iloc[0]["status"] == "FINISHED"
    assert sorted(children["tags.bench.job_key"]) == ["tkp-pcl|seed=0", "vit-pcm|seed=0"]  # each exactly once
    assert set(children["status"]) == {"FINISHED"}
    assert sorted(t.state.name for t in trials(tmp_path)) == ["COMPLETE", "COMPLETE"]


def test_a_store_failing_mid_trial_is_one_line_and_the_trial_is_retried(tmp_path, monkeypatch):
    study = write_study(tmp_path / "s.yaml", short(**{"base.train.epochs": 3}))
    env = {**os.environ, "MLFLOW_SQLALCHEMYSTORE_POOLCLASS": "NullPool"}  # each store call opens the file anew
    proc = start("run", str(study), cwd=tmp_path, env=env)
    wait_for(
        lambda: any(t.user_attrs.get("epoch", 0) >= 1 for t in trials(tmp_path)) or proc.poll() is not None,
        "the first epoch",
    )
    db = tmp_path / "mlflow.db"
    os.replace(db, tmp_path / "mlflow.db.saved")
    db.write_bytes(os.urandom(4096))  # the store is now garbage
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    line = one_line_error(err)
    assert line.startswith(f"bench: error: MLflow store sqlite:///{db} failed during trial 0: ")
    assert line.endswith("; run the same command again to retry")
    assert [t.state.name for t in trials(tmp_path)] == ["FAIL"]

    os.replace(tmp_path / "mlflow.db.saved", db)
    r = bench("run", str(study), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [t.state.name for t in trials(tmp_path)] == ["FAIL", "COMPLETE"]
    monkeypatch.chdir(tmp_path)
    children, parents = child_runs(URI, "smoke")
    assert sorted(children["status"]) == ["FAILED", "FINISHED"] and parents.iloc[0]["status"] == "FINISHED"
