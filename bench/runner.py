"""Running a study: open its Optuna study and MLflow experiment, enqueue what is missing, and
let one or more workers claim and run trials until none is left.

Exactly once: every (variant x grid point x seed) job is enqueued as a WAITING Optuna trial
(only if no COMPLETE, PRUNED, RUNNING or WAITING trial has its key); a worker claims a WAITING
trial atomically (see :func:`bench.storage.claim_waiting_trial`). Search trials are asked from
the sampler until ``search.n_trials`` are complete, pruned or running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .integrity import DATA_ATTR, check_study_file, data_json, job_attrs
from .storage import claim_waiting_trial, fail_dead_trials, heartbeat, open_storage, study_lock
from .search_protocol import ProtocolSplits, confirm_attrs, confirmation_todo, search_spent, stage_of
from .study import Study, study_jobs
from .trial import TrialContext, run_trial
from .tracking import Tracker
from tkp_pcl.data import Splits

DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def make_sampler(study: Study) -> optuna.samplers.BaseSampler:
    s = study.search
    if s is None:
        return optuna.samplers.RandomSampler(seed=0)  # never asked: grid jobs are enqueued
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed, constant_liar=True, n_startup_trials=min(10, max(2, s.n_trials // 3)))
    if s.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=s.seed)
    return optuna.samplers.RandomSampler(seed=s.seed)


def make_pruner(study: Study) -> optuna.pruners.BasePruner:
    s = study.search
    if s is None or s.pruner == "none":
        return optuna.pruners.NopPruner()
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials, n_warmup_steps=s.pruner_warmup_epochs)


@dataclass
class StudyHandle:
    """An opened study: its file, its Optuna study and storage, its MLflow side."""

    study: Study
    storage_url: str
    storage: optuna.storages.BaseStorage
    optuna_study: optuna.Study
    tracker: Tracker
    workdir: Path
    #: (splits, tune/report splits or None) as this process loaded and checked them before
    #: claiming anything (:func:`bench.cli._check_data`); its trials reuse them
    data: tuple[Splits, ProtocolSplits | None] | None = None

    @property
    def total(self) -> int:
        """Trials the study asks for: its grid jobs, or its search trials plus the confirmation
        runs (fewer when fewer search trials finished than ``confirm.top_n``)."""
        s, c = self.study.search, self.study.confirm
        if s is None:
            return len(study_jobs(self.study))
        if c is None:
            return s.n_trials
        trials = self.trials()
        top = c.top_n
        if search_spent(self.study, trials):
            finished = [t for t in trials if stage_of(t.user_attrs.get("job_key")) == "search" and t.state == TrialState.COMPLETE]
            top = min(top, len(finished))
        return s.n_trials + ((top + 1) * len(c.seeds) if top else 0)

    def trials(self, states=None) -> list[optuna.trial.FrozenTrial]:
        return self.optuna_study.get_trials(deepcopy=False, states=states)

    def counts(self) -> Counter:
        return Counter(t.state.name for t in self.trials())


def open_study(study: Study, storage_url: str, tracking_uri: str, create: bool = True, data=None) -> StudyHandle:
    """The study's handle; ``data``: its loaded (splits, protocol splits), see :attr:`StudyHandle.data`."""
    storage = open_storage(storage_url)
    direction = study.search.direction if study.search else "maximize"
    kw = dict(study_name=study.name, storage=storage, sampler=make_sampler(study), pruner=make_pruner(study))
    if create:
        ostudy = optuna.create_study(direction=direction, load_if_exists=True, **kw)
    else:
        ostudy = optuna.load_study(**kw)
    workdir = Path(".bench") / study.name
    return StudyHandle(study, storage_url, storage, ostudy, Tracker(tracking_uri, study.name), workdir, data)


def close_dead_trials(h: StudyHandle) -> int:
    """Fail the RUNNING trials of dead workers in Optuna and their runs in MLflow."""
    dead = fail_dead_trials(h.optuna_study, h.storage)
    for t in dead:
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id and h.tracker.run_status(run_id) == "RUNNING":
            h.tracker.set_tags(run_id, {"bench.state": "FAIL", "bench.error": "worker died"})
            h.tracker.end(run_id, "FAILED")
    return len(dead)


def check(h: StudyHandle, path: str) -> None:
    """Refuse (:class:`StudyError`) a study file that disagrees with the configuration stored
    with any trial of the study; called before anything is claimed or enqueued."""
    check_study_file(h.study, h.trials(), path)


def prepare(h: StudyHandle, path: str) -> dict[str, int]:
    """Before workers start: close what died, finish the bookkeeping of trials that ended just
    before a crash, then, under :func:`bench.storage.study_lock`, check the study file against
    every stored trial and enqueue each missing job once (with its resolved configuration)."""
    dead = close_dead_trials(h)
    ends = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}
    for t in h.trials(states=tuple(ends)):  # ended in Optuna, run left RUNNING (crash, store failure)
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id and h.tracker.run_status(run_id) == "RUNNING":
            h.tracker.end(run_id, ends[t.state])
    queued = 0
    with study_lock(h.storage_url, h.study.name):
        check(h, path)  # all jobs first: a refused file enqueues nothing
        live = {t.user_attrs.get("job_key") for t in h.trials(states=LIVE_STATES)}
        for job in study_jobs(h.study):
            if job.key not in live:
                h.optuna_study.enqueue_trial(params={}, user_attrs=job_attrs(job, h.study))
                queued += 1
    queued += enqueue_confirmation(h, retry_failed=True)  # a failed confirmation run: retried once per run, as grid jobs
    return {"dead": dead, "queued": queued}


def next_trial(h: StudyHandle) -> optuna.Trial | None:
    """Claim a queued job, or ask the sampler for a search trial while the budget lasts; once
    it is spent and no search trial runs, enqueue the confirmation stage and claim from it."""
    trial = claim_waiting_trial(h.optuna_study, h.storage)
    if trial is not None or h.study.search is None:
        return trial
    trials = h.trials()
    if not search_spent(h.study, trials):
        failed = sum(1 for t in trials if t.state == TrialState.FAIL and stage_of(t.user_attrs.get("job_key")) == "search")
        if failed >= max(3, h.study.search.n_trials):
            return None  # every trial fails: stop instead of looping
        return h.optuna_study.ask()
    if enqueue_confirmation(h):
        return claim_waiting_trial(h.optuna_study, h.storage)
    return None


def enqueue_confirmation(h: StudyHandle, retry_failed: bool = False) -> int:
    """Enqueue the confirmation jobs that are due and missing (each once, under the study's
    lock, with its resolved configuration; failed ones too with ``retry_failed``, as
    :func:`prepare` does); returns how many."""
    if h.study.confirm is None or confirmation_todo(h.study, h.trials(), retry_failed) in (None, []):
        return 0
    with study_lock(h.storage_url, h.study.name):
        todo = confirmation_todo(h.study, h.trials(), retry_failed) or []  # again: another process may have done it
        for job in todo:
            h.optuna_study.enqueue_trial(params={}, user_attrs={**confirm_attrs(job), DATA_ATTR: data_json(h.study)})
    return len(todo)


def confirmation_pending(h: StudyHandle) -> bool:
    """Whether the confirmation stage waits for search trials other workers still run."""
    if h.study.confirm is None:
        return False
    trials = h.trials()
    return search_spent(h.study, trials) and confirmation_todo(h.study, trials) is None


def work(h: StudyHandle, on_progress=None, on_trial_end=None, poll: float = 2.0) -> Counter:
    """A worker: claim and run trials until none is left (waiting, before a confirmation stage,
    for the search trials of other workers to end). Returns the states it produced."""
    parent = h.tracker.open()
    ctx = TrialContext(h.study, h.optuna_study, h.tracker, parent, h.workdir, on_progress)
    if h.data is not None:
        ctx._splits, ctx._protocol = h.data
    done: Counter = Counter()
    while True:
        close_dead_trials(h)
        trial = next_trial(h)
        if trial is None:
            if confirmation_pending(h):
                time.sleep(poll)
                continue
            return done
        with heartbeat(h.storage, h.optuna_study, trial):
            state = run_trial(ctx, trial)
        done[state.name] += 1
        if on_trial_end:
            on_trial_end(trial, state)


def wait_for_others(h: StudyHandle, poll: float = 2.0) -> None:
    """Block while other workers (here or on other machines) still run trials of the study;
    trials of workers that die meanwhile are failed (dead pid here, heartbeat elsewhere)."""
    while h.trials(states=(TrialState.RUNNING,)):
        close_dead_trials(h)
        time.sleep(poll)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=Console(stderr=True),
    )  # fmt: skip


def run_in_process(h: StudyHandle) -> Counter:
    """One worker in this process, with a rich progress display."""
    with _progress() as prog:
        finished = sum(1 for _ in h.trials(states=DONE_STATES))
        trials_task = prog.add_task("trials", total=h.total, completed=finished, info="")
        epoch_task = prog.add_task("epochs", total=1, info="")

        def on_progress(label: str, epoch: int, epochs: int) -> None:
            prog.update(epoch_task, completed=epoch, total=epochs, info=label)

        def on_trial_end(trial, state) -> None:
            prog.update(trials_task, completed=sum(1 for _ in h.trials(states=DONE_STATES)),
                        info=f"last: trial {trial.number} {state.name}")  # fmt: skip

        return work(h, on_progress, on_trial_end)


def run_workers(h: StudyHandle, study_path: str, tracking_uri: str, n: int) -> None:
    """``n`` worker processes (``bench worker``) on this study; progress read from the storage."""
    h.workdir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // n)
    procs = []
    for i in range(n):
        log = open(h.workdir / f"worker-{i}.log", "w")
        cmd = [sys.executable, "-m", "bench.cli", "worker", study_path, "--storage", h.storage_url,
               "--tracking-uri", tracking_uri, "--threads", str(threads), "--quiet"]  # fmt: skip
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    try:
        with _progress() as prog:
            task = prog.add_task(f"trials ({n} workers)", total=h.total, info="")
            while any(p.poll() is None for p in procs):
                running = h.trials(states=(TrialState.RUNNING,))
                info = ", ".join(f"{t.user_attrs.get('job_key', t.number)} ep {t.user_attrs.get('epoch', 0)}" for t in running)
                prog.update(task, completed=len(h.trials(states=DONE_STATES)), info=info[:120])
                time.sleep(1.0)
            prog.update(task, completed=len(h.trials(states=DONE_STATES)), info="")
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(timeout=60)
        raise
    bad = [i for i, p in enumerate(procs) if p.returncode not in (0, 1)]
    if bad:
        logs = ", ".join(str(h.workdir / f"worker-{i}.log") for i in bad)
        raise RuntimeError(f"worker(s) {bad} exited abnormally; see {logs}")


def finish_parent(h: StudyHandle) -> bool:
    """Mark the study's parent run FINISHED once every job is done; returns whether it is."""
    complete = h.total <= len(h.trials(states=DONE_STATES))
    parent = h.tracker.parent_run(create=False)
    if parent:
        counts = h.counts()
        h.tracker.set_tags(parent, {f"bench.trials_{k.lower()}": v for k, v in counts.items()})
        h.tracker.end(parent, "FINISHED" if complete else "RUNNING")
    return complete
