"""Signals as a user sends them: SIGTERM from a scheduler or
``timeout``, Ctrl-C to the terminal's process group, ``kill -9`` of a ``bench run --workers 2``
parent, SIGTERM to ``bench ui``. Each ends in one line, the right exit code, no process left,
and a study the same command finishes (every trial done once)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers import ROOT, child_runs, wait_for_health, write_study

URI = "sqlite:///mlflow.db"
RESUME = "run the same command again to resume"
# small and short: the signal comes at epoch 1, the rerun finishes. An epoch of this takes about
# 0.1 s, so a test that must catch a trial mid-training gives it many epochs.
SMALL = {"data.n_train": 32, "data.n_val": 16, "base.train.epochs": 3, "base.segment.enabled": False}


def start_bench(*args, cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _procs() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(d.name)] = (int(fields[1]), fields[0])
    return out


def descendants(pid: int) -> set[int]:
    procs, found, todo = _procs(), set(), [pid]
    while todo:
        parent = todo.pop()
        for p, (ppid, _) in procs.items():
            if ppid == parent and p not in found:
                found.add(p)
                todo.append(p)
    return found


def alive(pids: set[int]) -> set[int]:
    procs = _procs()
    return {p for p in pids if p in procs and procs[p][1] != "Z"}


def wait_gone(pids: set[int], timeout: float = 60) -> set[int]:
    deadline = time.time() + timeout
    while alive(pids) and time.time() < deadline:
        time.sleep(0.3)
    return alive(pids)


def journal_study(cwd: Path):
    journal = cwd / ".bench" / "optuna.journal"
    if not journal.exists():
        return None
    try:
        return optuna.load_study(
            study_name="smoke",
            storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))),
        )
    except KeyError:
        return None


def wait_running(proc: subprocess.Popen, cwd: Path, n: int = 1, epoch: int = 1, timeout: float = 180) -> None:
    """Until ``n`` trials run and have reached ``epoch``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read()
        st = journal_study(cwd)
        running = st.get_trials(states=(optuna.trial.TrialState.RUNNING,)) if st else []
        if len(running) >= n and all(t.user_attrs.get("epoch", 0) >= epoch for t in running):
            return
    raise AssertionError("the study never got going")


def assert_one_line(stderr: str, expected: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert [ln for ln in stderr.splitlines() if ln.startswith("bench:")] == [expected], stderr


def running_trials(cwd: Path) -> list[int]:
    return [t.number for t in journal_study(cwd).get_trials(states=(optuna.trial.TrialState.RUNNING,))]


def assert_resumable(cwd: Path, monkeypatch, trials: int, interrupted: list[int], runs_closed: bool = True) -> None:
    """No trial left RUNNING: each interrupted trial is FAIL in Optuna (not finished after the
    signal); with ``runs_closed``, its run KILLED (or FAILED) in MLflow. (An interrupt that lands
    inside an MLflow SQLite write can leave that run RUNNING; the next ``bench run`` ends it.)"""
    st = journal_study(cwd)
    assert len(st.trials) == trials
    assert {t.number: t.state.name for t in st.trials if t.number in interrupted} == dict.fromkeys(interrupted, "FAIL")
    assert not st.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    waiting = st.get_trials(states=(optuna.trial.TrialState.WAITING,))
    keys = sorted(st.trials[n].user_attrs["job_key"] for n in interrupted)
    assert sorted(t.user_attrs["job_key"] for t in waiting) == keys  # each queued again, once
    if runs_closed:
        monkeypatch.chdir(cwd)
        children, _ = child_runs(URI, "smoke")
        assert "RUNNING" not in set(children["status"]), children[["status", "tags.bench.error"]]


def assert_finishes(study: Path, cwd: Path, monkeypatch, variants: list[str]) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "bench.cli", "run", str(study)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr
    monkeypatch.chdir(cwd)
    children, parents = child_runs(URI, "smoke")
    finished = children[children["status"] == "FINISHED"]
    assert sorted(finished["tags.bench.variant"]) == sorted(variants)  # each once
    assert "RUNNING" not in set(children["status"])  # every interrupted run ended
    assert parents.iloc[0]["status"] == "FINISHED"


@pytest.mark.slow
def test_sigterm_to_bench_run_closes_the_trial_and_the_rerun_resumes_it(tmp_path, monkeypatch):
    study = write_study(tmp_path / "s.yaml", SMALL, variants={"tkp-pcl": {}})
    proc = start_bench("run", str(study), cwd=tmp_path)
    wait_running(proc, tmp_path)
    kids, running = descendants(proc.pid), running_trials(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert_one_line(err, f"bench: interrupted (SIGTERM); {RESUME}")
    assert not wait_gone(kids)
    assert_resumable(tmp_path, monkeypatch, trials=2, interrupted=running)
    st = journal_study(tmp_path)
    assert st.trials[0].state.name == "FAIL" and st.trials[0].user_attrs["error"] == "Interrupted: SIGTERM"
    children, _ = child_runs(URI, "smoke")
    assert list(children["status"]) == ["KILLED"] and list(children["tags.bench.error"]) == ["interrupted (SIGTERM)"]
    assert any((tmp_path / ".bench" / "smoke" / "checkpoints").iterdir())  # kept for the resume

    assert_finishes(study, tmp_path, monkeypatch, ["tkp-pcl"])
    children, _ = child_runs(URI, "smoke")
    resumed = children[children["status"] == "FINISHED"]["tags.bench.resumed_from_epoch"]
    assert int(resumed.iloc[0]) >= 1  # the interrupted trial's epochs were kept


def test_pre_timeout_signal_stops_at_the_epoch_s_end_and_the_rerun_resumes_there(tmp_path, monkeypatch):
    """SIGUSR2 (what ``bench submit`` asks Slurm to send before the time limit): the epoch under
    way finishes and is checkpointed, then the trial is closed and queued again."""
    study = write_study(tmp_path / "s.yaml", {**SMALL, "base.train.epochs": 60}, variants={"tkp-pcl": {}})
    proc = start_bench("run", str(study), cwd=tmp_path)
    wait_running(proc, tmp_path)
    running = running_trials(tmp_path)
    proc.send_signal(signal.SIGUSR2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGUSR2, err
    assert "Traceback" not in err, err
    assert [ln for ln in err.splitlines() if ln.startswith("bench:")] == [
        "bench: SIGUSR2 (pre-timeout): stopping at the end of this epoch; its trial is queued again",
        "bench: stopped (SIGUSR2, pre-timeout); a trial under way was checkpointed and queued again",
    ]
    assert_resumable(tmp_path, monkeypatch, trials=2, interrupted=running)
    st = journal_study(tmp_path)
    stopped_after = st.trials[running[0]].user_attrs["epoch"]  # epochs done and checkpointed
    assert stopped_after >= 2  # the signal came during epoch 2 or later, and that epoch was finished

    assert_finishes(study, tmp_path, monkeypatch, ["tkp-pcl"])
    children, _ = child_runs(URI, "smoke")
    assert sorted(children["status"]) == ["FINISHED", "KILLED"]
    resumed = children[children["status"] == "FINISHED"]["tags.bench.resumed_from_epoch"]
    assert int(resumed.iloc[0]) == stopped_after  # nothing done twice


@pytest.mark.slow
def test_signals_to_bench_run_with_two_workers_stop_the_workers_once(tmp_path, monkeypatch):
    """SIGTERM to the parent (a scheduler), then Ctrl-C to the terminal's process group, then
    ``kill -9`` of the parent: the workers stop every time, their trials are closed, and the
    same command then finishes the study with each trial done once."""
    # each rerun resumes both trials, and both must still be training when the next signal comes:
    # the faster variant gets ~10 epochs ahead per run
    study = write_study(tmp_path / "s.yaml", {**SMALL, "base.train.epochs": 120})
    cases = ((signal.SIGTERM, False, 143), (signal.SIGINT, True, 130), (signal.SIGKILL, False, -9))
    for k, (sig, group, code) in enumerate(cases, 1):
        # its own session, like a shell's job: killpg is what the terminal does on Ctrl-C
        proc = start_bench("run", str(study), "--workers", "2", cwd=tmp_path, start_new_session=True)
        wait_running(proc, tmp_path, n=2, epoch=k)  # resumed at epoch k - 1 or later
        workers, running = descendants(proc.pid), running_trials(tmp_path)
        assert len([p for p in workers if _procs()[p][0] == proc.pid]) == 2
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == code, err
        if sig != signal.SIGKILL:
            assert_one_line(err, f"bench: interrupted ({sig.name}); {RESUME}")
        assert not wait_gone(workers), f"after {sig.name}: workers left running"
        assert_resumable(tmp_path, monkeypatch, trials=2 * k + 2, interrupted=running, runs_closed=False)
        for i in range(2):
            log = (tmp_path / f".bench/smoke/worker-{i}.log").read_text()
            assert "Traceback" not in log, log
    assert_finishes(study, tmp_path, monkeypatch, ["tkp-pcl", "vit-pcm"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bench_ui_on_a_port_in_use_is_one_line_exit_2(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = start_bench("ui", "--port", str(port), cwd=tmp_path)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.strip() == f"bench: error: port {port} on 127.0.0.1 is in use; pass --port"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_signal_to_bench_ui_stops_the_server_and_frees_the_port(tmp_path, sig):
    port = _free_port()
    proc = start_bench("ui", "--port", str(port), cwd=tmp_path)
    assert wait_for_health(port) == 200
    server = descendants(proc.pid)
    assert len(server) >= 3  # mlflow ui, uvicorn and its workers, the job runner
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert_one_line(err, f"bench: interrupted ({sig.name}); the MLflow UI is stopped")
    assert not wait_gone(server, timeout=10)
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
