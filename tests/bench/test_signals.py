"""bench.signals: SIGTERM as Ctrl-C, a second signal while stopping, children tied to their
parent, process groups stopped whole."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.signals import Interrupted, exit_code

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def python(code: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_exit_codes():
    assert exit_code(Interrupted(signal.SIGTERM)) == 143
    assert exit_code(Interrupted(signal.SIGINT)) == 130
    assert exit_code(KeyboardInterrupt()) == 130
    assert str(Interrupted(signal.SIGTERM)) == "SIGTERM"


def test_sigterm_interrupts_once_and_a_second_signal_does_not_cut_the_shutdown():
    proc = python("""
import os, signal, sys, time
from bench.signals import exit_code, stop_on_signals
with stop_on_signals():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
    except KeyboardInterrupt as e:
        os.kill(os.getpid(), signal.SIGINT)  # while shutting down
        time.sleep(0.5)
        print("shutdown done", type(e).__name__, e, flush=True)
        sys.exit(exit_code(e))
""")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert out.strip() == "shutdown done Interrupted SIGTERM"
    assert err.strip().startswith("bench: SIGINT while stopping: finishing the shutdown first"), err


def test_the_pre_timeout_signal_stops_at_the_next_safe_point_and_sigterm_still_stops_at_once():
    proc = python("""
import os, signal, sys, time
from bench.signals import exit_code, preempted, raise_if_stopping, stop_on_signals
with stop_on_signals():
    os.kill(os.getpid(), signal.SIGUSR2)
    os.kill(os.getpid(), signal.SIGUSR2)  # Slurm's and submitit's: heeded once
    time.sleep(0.2)
    print("epoch finished", preempted(), flush=True)  # no interrupt in the middle of the work
    try:
        raise_if_stopping()  # the epoch's end
    except KeyboardInterrupt as e:
        print("stopped", e, flush=True)
with stop_on_signals():
    os.kill(os.getpid(), signal.SIGUSR2)
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # before the epoch's end: at once
        time.sleep(10)
    except KeyboardInterrupt as e:
        print("stopped", e, preempted(), flush=True)
        sys.exit(exit_code(e))
""")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert out.split("\n")[:3] == ["epoch finished True", "stopped SIGUSR2", "stopped SIGTERM True"]
    assert err.count("SIGUSR2 (pre-timeout): stopping at the end of this epoch") == 2, err  # once per block


def test_handlers_come_back_after_the_block():
    from bench.signals import stop_on_signals

    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_started_with_child_env_gets_sigterm_when_its_parent_is_killed(tmp_path):
    mark = tmp_path / "child.txt"
    child = f"""
import time
from pathlib import Path
from bench.signals import stop_on_signals
with stop_on_signals():
    try:
        time.sleep(60)
    except KeyboardInterrupt as e:
        Path({str(mark)!r}).write_text(str(e))
"""
    parent = python(f"""
import subprocess, sys, time
from bench.signals import child_env
p = subprocess.Popen([sys.executable, "-c", {child!r}], env=child_env(), start_new_session=True)
print(p.pid, flush=True)
time.sleep(60)
""")
    pid = int(parent.stdout.readline())
    time.sleep(2)  # the child has started and installed its handlers
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the child outlived its killed parent")
    assert mark.read_text() == "SIGTERM"  # stopped through its handler: it closed its trial


def test_stop_processes_stops_a_whole_group():
    from bench.signals import stop_processes

    leader = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    time.sleep(0.5)
    members = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _pgid(int(d.name)) == leader.pid]
    assert len(members) == 3
    stop_processes([leader], group=True, timeout=10)
    assert not [p for p in members if _alive(p)]


def _pgid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except OSError:
        return None


def test_a_store_error_that_comes_of_an_interrupt_is_the_interrupt(monkeypatch):
    """SQLAlchemy / MLflow wrap a KeyboardInterrupt raised inside them into their own errors:
    once a signal came, that is the interrupt, not "MLflow store failed"."""
    import bench.signals
    from bench.stores.mlflow_store import TrackingStoreError, _store_call

    class Store:
        uri = "sqlite:///x.db"

        @_store_call
        def write(self):
            raise RuntimeError("(sqlite3.OperationalError) interrupted")

    with pytest.raises(TrackingStoreError):
        Store().write()
    monkeypatch.setattr(bench.signals, "_received", [signal.SIGTERM])
    with pytest.raises(Interrupted) as e:
        Store().write()
    assert e.value.signum == signal.SIGTERM


def test_an_interrupt_that_cuts_a_store_query_leaves_no_traceback_in_the_log(tmp_path):
    """SIGTERM at nine moments of an ORM fetch from SQLite (as in an Optuna storage): the
    interrupt comes through every time (one that lands in a ``__del__`` at the next safe point),
    and neither SQLAlchemy's pool ("Error closing cursor") nor Python ("Exception ignored in")
    prints a traceback. Without the quieting, most runs print one."""
    proc = python(f"""
import logging, os, signal, threading, time
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
import bench.signals
from bench.signals import Interrupted, stop_on_signals
logging.basicConfig()
class Base(DeclarativeBase): pass
class Row(Base):
    __tablename__ = "rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
engine = sa.create_engine("sqlite:///{tmp_path}/rows.db")
Base.metadata.create_all(engine)
with engine.begin() as c:
    c.execute(sa.text("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 200000) "
                      "INSERT INTO rows SELECT x, 'row' FROM n"))
start = time.perf_counter()
with Session(engine) as s:
    s.query(Row).all()
fetch = time.perf_counter() - start
for part in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
    with stop_on_signals():
        timer = threading.Timer(part * fetch, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        try:
            with Session(engine) as s:
                s.query(Row).all()
            timer.join()
            time.sleep(0.1)
            bench.signals.raise_if_stopping()  # landed in a __del__, which Python drops
        except Interrupted:
            print("interrupted", flush=True)
    bench.signals._received.clear()
    logging.getLogger("sqlalchemy.pool").setLevel(logging.NOTSET)
""")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split() == ["interrupted"] * 9
    assert "Traceback" not in err and "Error closing cursor" not in err, err
