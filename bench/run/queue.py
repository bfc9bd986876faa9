"""The study's queue of trials: what is enqueued, claimed and closed, exactly once.

Every grid job is enqueued as a WAITING Optuna trial with its stored configuration (only if no
live trial, :data:`bench.records.LIVE`, has its key); a worker claims a WAITING trial atomically
(:func:`bench.stores.claim_waiting_trial`). Search trials are asked from the sampler until
``search.n_trials`` are complete, pruned or running; then the confirmation jobs are enqueued,
once, under the study's lock.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from ..records import DONE, LIVE, Attr, Stage, Tag, stage_of
from ..stores import claim_waiting_trial, fail_dead_trials, study_lock
from ..study import JOB_ATTRS, Job, StudyError, check_study_file, confirmation_jobs, study_jobs, trial_attrs

#: a run whose Optuna trial ended while the run stayed RUNNING (crash, store failure) ends so
RUN_END = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


def states(names: Sequence[str]) -> tuple[TrialState, ...]:
    """Optuna's trial states for state names (:data:`bench.records.DONE`, ...)."""
    return tuple(TrialState[n] for n in names)


def searched(trials: Sequence[Any], *state_names: str) -> list[Any]:
    """The study's search trials, optionally only those in one of ``state_names``."""
    return [
        t
        for t in trials
        if stage_of(t.user_attrs.get(Attr.JOB_KEY)) == Stage.SEARCH and (not state_names or t.state.name in state_names)
    ]


def search_spent(study, trials: Sequence[Any]) -> bool:
    """Whether ``search.n_trials`` search trials are complete, pruned or running."""
    return len(searched(trials, "COMPLETE", "PRUNED", "RUNNING")) >= study.search.n_trials


def confirmation_todo(study, trials: Sequence[Any], retry_failed: bool = False) -> list[Job] | None:
    """The confirmation jobs to enqueue now: None while the confirmation is not due (no
    ``confirm:``, search budget not spent, or search trials still running or waiting), else the
    jobs no live trial holds, nor a failed one unless ``retry_failed`` (as grid jobs, a failed
    job is retried by the next ``bench run``, not in a loop); [] when none is missing.
    Raises :class:`StudyError` if the study confirmed other search trials than those that rank
    top now (``search.n_trials`` raised after the confirmation)."""
    if study.confirm is None or not search_spent(study, trials):
        return None
    if searched(trials, "RUNNING", "WAITING"):
        return None
    done = searched(trials, "COMPLETE")
    if not done:
        return []
    jobs = confirmation_jobs(study, done)
    wanted = {j.key for j in jobs}
    for t in trials:
        key = t.user_attrs.get(Attr.JOB_KEY)
        if stage_of(key) == Stage.CONFIRM and key not in wanted and t.user_attrs.get(Attr.CONFIRM_OF) is not None:
            raise StudyError(
                f"confirm: the study confirmed search trial {t.user_attrs[Attr.CONFIRM_OF]} ({key!r}), which is no longer "
                f"in the top {study.confirm.top_n} (search.n_trials changed?); rename the study to confirm another search"
            )
    held = LIVE if retry_failed else (*LIVE, "FAIL")
    live = {t.user_attrs.get(Attr.JOB_KEY) for t in trials if t.state.name in held}
    return [j for j in jobs if j.key not in live]


#: how often a job whose worker died under it (killed, out of memory, node lost) is queued again by
#: the workers that are left; past that, only a new ``bench run`` / ``bench submit`` retries it, so a
#: job that kills every worker that takes it cannot take the whole array down
DEAD_RETRIES = 2


def close_dead_trials(h, own: bool = False) -> int:
    """Fail the RUNNING trials of dead workers in Optuna and their runs in MLflow (with ``own``,
    also the trials this process claimed: it calls so when it runs none), and queue each job
    again (:data:`DEAD_RETRIES` times at most), to be resumed from its checkpoint."""
    dead = fail_dead_trials(h.optuna_study, h.storage, own=own)
    for t in dead:
        run_id = t.user_attrs.get(Attr.MLFLOW_RUN_ID)
        if run_id and h.tracker.run_status(run_id) == "RUNNING":
            h.tracker.set_tags(run_id, {Tag.STATE: "FAIL", Tag.ERROR: "worker died"})
            h.tracker.end(run_id, "FAILED")
        deaths = t.user_attrs.get(Attr.WORKER_DEATHS, 0) + 1
        if deaths > DEAD_RETRIES:
            what = f"left failed ({deaths} workers died on its job; the next `bench run` retries it)"
        elif requeue(h, t.number, deaths=deaths):
            what = f"queued again (retry {deaths} of {DEAD_RETRIES})"
        else:
            what = "not queued again (its job is queued or running already)"
        print(f"bench: trial {t.number}: its worker died; {what}", file=sys.stderr)
    return len(dead)


def check_lost_results(h) -> None:
    """Refuse (:class:`StudyError`) a study whose Optuna storage lost finished trials: a job with
    a FINISHED run in the study's MLflow experiment but no COMPLETE trial (a journal cut short,
    restored from an older copy, or deleted) would otherwise run again, MLflow holding two runs.

    MLflow is read first: a trial is told COMPLETE before its run is ended FINISHED, so a run
    another process finishes meanwhile has its COMPLETE trial in the storage read after."""
    finished = h.tracker.finished_job_keys()
    complete = {t.user_attrs.get(Attr.JOB_KEY) for t in h.trials(states=(TrialState.COMPLETE,))}
    lost = sorted(finished - complete)
    if lost:
        shown = ", ".join(lost[:3]) + (f" and {len(lost) - 3} more" if len(lost) > 3 else "")
        raise StudyError(
            f"the Optuna storage {h.storage_url} lost the results of {len(lost)} finished trial(s) of study "
            f"{h.study.name!r} ({shown}: FINISHED in MLflow {h.tracker.uri}, not complete in the storage); nothing was "
            "enqueued: restore the storage (journal) from a backup, or rename the study to run it again from scratch"
        )


def prepare(h) -> dict[str, int]:
    """Before workers start: close what died, finish the bookkeeping of trials that ended just
    before a crash, then, under :func:`bench.stores.study_lock`, check the study file against
    every stored trial, refuse a storage that lost finished trials (:func:`check_lost_results`)
    and enqueue each missing job once (with its resolved configuration)."""
    dead = close_dead_trials(h)
    for t in h.trials(states=tuple(RUN_END)):
        run_id = t.user_attrs.get(Attr.MLFLOW_RUN_ID)
        if run_id and h.tracker.run_status(run_id) == "RUNNING":
            h.tracker.end(run_id, RUN_END[t.state])
    queued = 0
    with study_lock(h.storage_url, h.study.name):
        check_study_file(h.study, h.trials(), h.path)  # all jobs first: a refused file enqueues nothing
        check_lost_results(h)
        live = {t.user_attrs.get(Attr.JOB_KEY) for t in h.trials(states=states(LIVE))}
        for job in study_jobs(h.study):
            if job.key not in live:
                h.optuna_study.enqueue_trial(params={}, user_attrs=trial_attrs(job, h.study))
                queued += 1
    queued += enqueue_confirmation(h, retry_failed=True)  # a failed confirmation run: retried once per run
    return {"dead": dead, "queued": queued}


def requeue(h, number: int, deaths: int | None = None) -> bool:
    """Queue the job of trial ``number`` (interrupted: a signal, a scheduler's pre-timeout or
    preemption; or its worker died) again, as a copy with its stored job attributes (a search
    trial's parameters fixed) and its count of worker deaths (``deaths`` when given), so any
    worker of the study resumes it from the job's checkpoint. Once: under the study's lock, and
    not while a live trial holds the job's key. Returns whether it queued."""
    with study_lock(h.storage_url, h.study.name):
        trials = h.trials()
        old = next((t for t in trials if t.number == number), None)
        key = old.user_attrs.get(Attr.JOB_KEY) if old is not None else None
        if key is None or any(t.user_attrs.get(Attr.JOB_KEY) == key and t.state.name in LIVE for t in trials):
            return False
        attrs = {k: v for k, v in old.user_attrs.items() if k in (*JOB_ATTRS, Attr.WORKER_DEATHS)}
        if deaths is not None:
            attrs[Attr.WORKER_DEATHS] = deaths
        h.optuna_study.enqueue_trial(params=old.params, user_attrs=attrs, skip_if_exists=False)
    return True


def next_trial(h) -> optuna.Trial | None:
    """Claim a queued job, or ask the sampler for a search trial while the budget lasts; once
    it is spent and no search trial runs, enqueue the confirmation stage and claim from it."""
    trial = claim_waiting_trial(h.optuna_study, h.storage)
    if trial is not None or h.study.search is None:
        return trial
    trials = h.trials()
    if not search_spent(h.study, trials):
        if len(searched(trials, "FAIL")) >= max(3, h.study.search.n_trials):
            return None  # every trial fails: stop instead of looping
        return h.optuna_study.ask()
    if enqueue_confirmation(h):
        return claim_waiting_trial(h.optuna_study, h.storage)
    return None


def enqueue_confirmation(h, retry_failed: bool = False) -> int:
    """Enqueue the confirmation jobs that are due and missing (each once, under the study's
    lock, with its resolved configuration; failed ones too with ``retry_failed``, as
    :func:`prepare` does); returns how many."""
    if h.study.confirm is None or confirmation_todo(h.study, h.trials(), retry_failed) in (None, []):
        return 0
    with study_lock(h.storage_url, h.study.name):
        todo = confirmation_todo(h.study, h.trials(), retry_failed) or []  # again: another process may have done it
        for job in todo:
            h.optuna_study.enqueue_trial(params={}, user_attrs=trial_attrs(job, h.study))
    return len(todo)


def confirmation_pending(h) -> bool:
    """Whether the confirmation stage waits for search trials other workers still run."""
    if h.study.confirm is None:
        return False
    trials = h.trials()
    return search_spent(h.study, trials) and confirmation_todo(h.study, trials) is None


def total(h) -> int:
    """Trials the study asks for: its grid jobs, or its search trials plus the confirmation runs
    (fewer when fewer search trials finished than ``confirm.top_n``)."""
    s, c = h.study.search, h.study.confirm
    if s is None:
        return len(study_jobs(h.study))
    if c is None:
        return s.n_trials
    trials = h.trials()
    top = min(c.top_n, len(searched(trials, "COMPLETE"))) if search_spent(h.study, trials) else c.top_n
    return s.n_trials + ((top + 1) * len(c.seeds) if top else 0)


def done(h) -> int:
    """How many of the study's trials are finished for good (complete or pruned)."""
    return len(h.trials(states=states(DONE)))
