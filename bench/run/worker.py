"""Workers: claim and run a study's trials until none is left.

One loop (:func:`work`) serves ``bench run`` (in process, with a progress display, or as N
``bench worker`` child processes), ``bench worker`` on any machine, and rank 0 of a torchrun
group. It closes the trials of dead workers as it goes and, before a confirmation stage, waits
for the search trials other workers still run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable

from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tkp_pcl.process import signals_held

from ..records import Attr, trials_tag
from ..signals import child_env, raise_if_stopping, signum_of, stop_processes
from ..stores import heartbeat
from . import queue
from .command import worker_command
from .trial import TrialContext, run_trial


def work(h, on_progress=None, on_trial_end=None, before_stage1: Callable | None = None, poll: float = 2.0) -> Counter:
    """A worker: claim and run trials until none is left. Returns the states it produced.
    ``before_stage1(config, checkpoint)``: called before each stage-1 training (DDP's rank 0
    tells the other ranks what to train)."""
    ctx = TrialContext(
        h.study, h.optuna_study, h.tracker, h.tracker.open(), h.workdir, h.splits, h.tune, on_progress, before_stage1
    )
    produced: Counter = Counter()
    while True:
        raise_if_stopping()
        queue.close_dead_trials(h)
        trial = queue.next_trial(h)
        if trial is None:
            if queue.confirmation_pending(h):
                time.sleep(poll)
                continue
            if queue.total(h) <= queue.done(h):
                finish_parent(h)  # the last worker of an array (or of machines) closes the study's parent run
            return produced
        with heartbeat(h.storage, h.optuna_study, trial):
            try:
                state = run_trial(ctx, trial)
            except KeyboardInterrupt:
                _queue_again(h, trial.number)
                raise
        produced[state.name] += 1
        if on_trial_end:
            on_trial_end(trial, state)


def _queue_again(h, number: int) -> None:
    """An interrupted trial's job back in the queue, for whichever worker comes next (this one
    requeued by Slurm, another task of its array, the next ``bench run``); a store that fails
    now leaves that to the next ``bench run``, which queues every job not done."""
    try:
        queue.requeue(h, number)
    except Exception as e:  # noqa: BLE001 - the interrupt is what this process reports
        print(f"bench: trial {number} was not queued again ({type(e).__name__}: {e})", file=sys.stderr)


def wait_for_others(h, poll: float = 2.0) -> None:
    """Block while other workers (here or on other machines) still run trials of the study;
    trials of workers that die meanwhile are failed (dead pid here, heartbeat elsewhere), and so
    is a trial recorded as this process's (it runs none now), so no trial is waited for forever.
    A journal deleted meanwhile stops the wait (:class:`bench.stores.StudyStoreError`)."""
    while h.trials(states=(TrialState.RUNNING,)):
        raise_if_stopping()
        queue.close_dead_trials(h, own=True)
        if not h.trials(states=(TrialState.RUNNING,)):
            return
        time.sleep(poll)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
    )


def run_in_process(h) -> Counter:
    """One worker in this process, with a rich progress display."""
    with _progress() as prog:
        trials_task = prog.add_task("trials", total=queue.total(h), completed=queue.done(h), info="")
        epoch_task = prog.add_task("epochs", total=1, info="")

        def on_progress(label: str, epoch: int, epochs: int) -> None:
            prog.update(epoch_task, completed=epoch, total=epochs, info=label)

        def on_trial_end(trial, state) -> None:
            prog.update(trials_task, completed=queue.done(h), info=f"last: trial {trial.number} {state.name}")

        return work(h, on_progress, on_trial_end)


def _spawn(h, study_path: str, tracking_uri: str, n: int) -> list[subprocess.Popen]:
    """``n`` ``bench worker`` processes, each in its own session (a terminal's Ctrl-C reaches
    only this process, which passes it on once) and tied to this process (SIGTERM if it dies,
    even by ``kill -9``)."""
    cmd = worker_command(study_path, h.storage_url, tracking_uri, max(1, (os.cpu_count() or 1) // n))
    procs = []
    for i in range(n):
        with open(h.workdir / f"worker-{i}.log", "w") as log, signals_held():
            procs.append(
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=child_env())
            )
    return procs


def run_workers(h, study_path: str, tracking_uri: str, n: int) -> None:
    """``n`` worker processes (``bench worker``) on this study; progress read from the storage.
    Interrupted (SIGINT, SIGTERM) or failing, it sends each worker that signal once (SIGTERM on
    an error) and waits for them to close their trials."""
    h.workdir.mkdir(parents=True, exist_ok=True)
    procs = _spawn(h, study_path, tracking_uri, n)
    try:
        with _progress() as prog:
            task = prog.add_task(f"trials ({n} workers)", total=queue.total(h), info="")
            while any(p.poll() is None for p in procs):
                raise_if_stopping()
                running = h.trials(states=(TrialState.RUNNING,))
                info = ", ".join(
                    f"{t.user_attrs.get(Attr.JOB_KEY, t.number)} ep {t.user_attrs.get(Attr.EPOCH, 0)}" for t in running
                )
                prog.update(task, completed=queue.done(h), info=info[:120])
                time.sleep(1.0)
            prog.update(task, completed=queue.done(h), info="")
    except BaseException as e:
        stop_processes(procs, signum_of(e) if isinstance(e, KeyboardInterrupt) else signal.SIGTERM)
        raise
    bad = [i for i, p in enumerate(procs) if p.returncode not in (0, 1)]
    if bad:
        logs = ", ".join(str(h.workdir / f"worker-{i}.log") for i in bad)
        raise RuntimeError(f"worker(s) {bad} exited abnormally; see {logs}")


def finish_parent(h) -> bool:
    """Mark the study's parent run FINISHED once every job is done; returns whether it is."""
    complete = queue.total(h) <= queue.done(h)
    parent = h.tracker.parent_run(create=False)
    if parent:
        counts = Counter(t.state.name for t in h.trials())
        h.tracker.set_tags(parent, {trials_tag(k): v for k, v in counts.items()})
        h.tracker.end(parent, "FINISHED" if complete else "RUNNING")
    return complete
