"""One trial, from claim to end: the job it runs, its MLflow run, its Optuna state.

:func:`run_trial` takes a claimed (RUNNING) Optuna trial, rebuilds its job from the stored
configuration (a search trial's is sampled and stored now), opens its MLflow run through
:class:`TrialLifecycle`, runs the pipeline (:mod:`bench.run.pipeline`) once per training seed,
and logs the metrics and artifacts; the lifecycle tells Optuna and ends the run however it ends.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import traceback
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState

from tkp_pcl.data import Splits, seg_train_split_name
from tkp_pcl.runtime import distributed, precision, resolve_device

from ..records import (
    SPLIT_CONTEXTS,
    SPLIT_ROLES,
    Attr,
    Stage,
    Tag,
    grid_tag,
    seed_metric,
    split_size_tag,
    split_tag,
    stage_of,
)
from ..stores import StudyStoreError, TrackingStoreError, worker_identity
from ..study import (
    CategoricalParam,
    FloatParam,
    Job,
    StudyError,
    flatten,
    run_config,
    search_job,
    search_variant,
    stored_config,
    trial_attrs,
    variant_config,
    with_seed,
)
from .pipeline import TrialContext, job_paths, train_and_score, write_artifacts


def sample_params(study, trial: optuna.Trial) -> dict[str, Any]:
    """A search trial's values of ``search.space``, asked from the sampler."""
    params: dict[str, Any] = {}
    for path, spec in study.search.space.items():
        if isinstance(spec, FloatParam):
            params[path] = trial.suggest_float(path, spec.low, spec.high, log=spec.log)
        elif isinstance(spec, CategoricalParam):
            params[path] = trial.suggest_categorical(path, spec.choices)
        else:
            params[path] = trial.suggest_int(path, spec.low, spec.high, log=spec.log)
    return params


def _execution_source(study, variant: str):
    """This file's configuration whose execution settings a job it does not list (a
    confirmation job) runs with: its variant's, or the searched variant's."""
    return variant_config(study, variant if variant in study.variants else search_variant(study))


def claimed_job(ctx: TrialContext, trial: optuna.Trial) -> Job:
    """The job of a claimed trial, with the configuration stored with it and this worker's
    execution settings; a search trial's is sampled and stored now."""
    attrs, study = trial.user_attrs, ctx.study
    if Attr.JOB_KEY not in attrs:
        job = search_job(study, trial.number, sample_params(study, trial))
        for k, v in trial_attrs(job, study).items():
            trial.set_user_attr(k, v)
        return job
    key, variant = attrs[Attr.JOB_KEY], attrs[Attr.VARIANT]
    if stage_of(key) == Stage.SEARCH and not trial.params:  # a queued copy: its fixed values recorded
        sample_params(study, trial)
    listed = {j.key: j for j in ctx.jobs}.get(key)
    stored = stored_config(trial)
    if stored is None:
        raise StudyError(f"trial {trial.number} (job {key!r}) has no stored configuration")
    cfg = run_config(stored, listed.config if listed else _execution_source(study, variant))
    grid = json.loads(attrs.get(Attr.GRID) or "{}")
    return Job(
        key,
        variant,
        int(attrs[Attr.SEED]),
        cfg,
        stage_of(key),
        grid,
        attrs.get(Attr.CONFIRM_OF),
        attrs.get(Attr.CONFIRM_RANK),
    )


#: where a run ran under Slurm: each tag and the variables Slurm sets for it (the first set wins)
SLURM_ENV = (
    (Tag.SLURM_JOB_ID, ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID")),
    (Tag.SLURM_ARRAY_TASK_ID, ("SLURM_ARRAY_TASK_ID",)),
    (Tag.SLURM_NODE, ("SLURMD_NODENAME",)),
)


def where_tags(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Where this process runs: its Slurm job, array task and node (read from Slurm's
    environment variables; none outside Slurm) and the GPUs it sees."""
    import torch

    tags = {}
    for tag, names in SLURM_ENV:
        value = next((env[n] for n in names if env.get(n)), None)
        if value:
            tags[tag] = value
    if torch.cuda.is_available():
        tags[Tag.GPUS] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return tags


def run_tags(ctx: TrialContext, trial: optuna.Trial, job: Job) -> dict[str, Any]:
    """The tags a trial's run opens with: what it is (variant, seed, job, stage, grid point,
    confirmed trial) and where it runs (:func:`where_tags`)."""
    tags = {
        **where_tags(),
        Tag.VARIANT: job.variant,
        Tag.SEED: job.seed,
        Tag.TRIAL: trial.number,
        Tag.JOB_KEY: job.key,
        Tag.CONFIG_HASH: job.config_hash,
        Tag.DEVICE: job.config.train.device,
        Tag.OPTUNA_STUDY: ctx.study.name,
        Tag.WORLD_SIZE: distributed()[2],
        **{grid_tag(k): v for k, v in job.grid.items()},
        Tag.STAGE: job.stage,
    }
    if job.confirm_of is not None:
        tags.update({Tag.CONFIRM_OF: job.confirm_of, Tag.CONFIRM_RANK: job.rank})
    cfg = job.config
    device = resolve_device(cfg.train.device)
    tags[Tag.PRECISION] = precision(cfg.train.amp, device)
    if cfg.segment.enabled:
        tags[Tag.SEG_PRECISION] = precision(cfg.segment.amp, device)
    return tags


def run_params(ctx: TrialContext, job: Job) -> dict[str, Any]:
    """A run's params: the study's data section and the job's fully resolved configuration."""
    params = {f"data.{k}": v for k, v in flatten(ctx.study.data.model_dump(mode="json")).items()}
    params.update(flatten(job.config.model_dump(mode="json")))
    if job.config.segment.enabled:
        params["segment.train_split"] = seg_train_split_name(ctx.study.data)
    return params


class TrialLifecycle:
    """One claimed trial from start to end, in one place: ``with TrialLifecycle(...) as life``
    starts its MLflow run (params = the resolved configuration; tags = variant, seed, grid axes,
    configuration hash, ...); the body sets ``life.value`` and returns; on leaving, the Optuna
    trial is told (``skip_if_finished=True``: the dead-trial sweep of another process may have
    failed it meanwhile), the run tagged and ended, and ``life.state`` set.

    A failing trial (any ``Exception``) is FAIL in Optuna and FAILED in MLflow and is not
    re-raised; pruned is PRUNED / KILLED. A failing MLflow store (:class:`TrackingStoreError`)
    fails the Optuna trial (the next ``bench run`` retries it) and is re-raised with the trial's
    number; a failing Optuna storage (:class:`StudyStoreError`) ends the run FAILED and is
    re-raised; an interrupt fails the trial, keeps its checkpoint and is re-raised.
    """

    def __init__(self, ctx: TrialContext, trial: optuna.Trial, job: Job):
        self.ctx, self.trial, self.job = ctx, trial, job
        self.value: float | None = None
        self.state: TrialState | None = None
        self.run_id = ""

    def __enter__(self) -> TrialLifecycle:
        ctx, job, trial = self.ctx, self.job, self.trial
        for k, v in worker_identity().items():
            trial.set_user_attr(k, v)
        try:
            name = job.key.replace("|", " ")
            self.run_id = ctx.tracker.start_trial(
                ctx.parent_run_id, name, run_tags(ctx, trial, job), run_params(ctx, job)
            )
        except BaseException as e:
            self.__exit__(type(e), e, None)
            raise
        trial.set_user_attr(Attr.MLFLOW_RUN_ID, self.run_id)
        return self

    def _tell(self, state: TrialState, value: float | None = None) -> None:
        """Tell Optuna; ``self.state`` is the state the trial really has afterwards (FAIL where
        another process's dead-trial sweep closed it first)."""
        self.state = self.ctx.optuna_study.tell(self.trial, value, state=state, skip_if_finished=True).state

    def _note_error(self, message: str) -> None:
        try:
            self.trial.set_user_attr(Attr.ERROR, message[:500])
        except optuna.exceptions.UpdateFinishedTrialError:  # closed meanwhile by a dead-trial sweep
            pass

    def __exit__(self, exc_type, e, tb) -> bool:
        tracker, run = self.ctx.tracker, self.run_id
        if e is None:
            self._tell(TrialState.COMPLETE, self.value)
            if self.state != TrialState.COMPLETE:  # lost the race with a sweep: the result is not counted
                tracker.set_tags(
                    run,
                    {
                        Tag.STATE: self.state.name,
                        Tag.ERROR: "closed by another process "
                        "as dead before it finished (heartbeat missed); the next run retries it",
                    },
                )
            tracker.end(run, "FINISHED" if self.state == TrialState.COMPLETE else "FAILED")
            return False
        if isinstance(e, StudyStoreError):  # Optuna's storage cannot be written: end the run, tell nothing
            if run:  # the trial stays RUNNING; the next `bench run` finds its worker dead and retries it
                tracker.set_tags(run, {Tag.STATE: "FAIL", Tag.ERROR: f"Optuna storage failed: {e}"})
                tracker.end(run, "FAILED")
            return False
        if isinstance(e, TrackingStoreError):
            e.trial = self.trial.number
            self._note_error(f"MLflow store failed: {e.detail}")
            self._tell(TrialState.FAIL)  # the run is left RUNNING; the next `bench run` ends it
            return False
        if isinstance(e, optuna.TrialPruned):
            self._tell(TrialState.PRUNED)
            tracker.set_tags(run, {Tag.STATE: "PRUNED", Tag.PRUNED: str(e)})
            tracker.end(run, "KILLED")
            return True
        self._note_error(f"{type(e).__name__}: {e}")
        self._tell(TrialState.FAIL)
        if not run:
            return False
        if isinstance(e, Exception):
            tracker.set_tags(run, {Tag.STATE: "FAIL", Tag.ERROR: f"{type(e).__name__}: {e}"})
            tracker.log_text(run, "".join(traceback.format_exception(e)), "error.txt")
            tracker.end(run, "FAILED")
            return True
        why = f"interrupted ({e})" if str(e) else "interrupted"  # bench.signals.Interrupted names its signal
        tracker.set_tags(run, {Tag.STATE: "FAIL", Tag.ERROR: why})  # checkpoint kept
        tracker.end(run, "KILLED")
        return False


def split_tags(splits: Splits) -> dict[str, Any]:
    """The name and size of each split a trial really reads (stage-1 training, pseudo labels
    scored, held-out / segmentation scored, stage-2 training; a search trial's tune split and a
    confirmation's report part included), so a report never has to infer them."""
    tags: dict[str, Any] = {}
    for role in SPLIT_ROLES:
        split = getattr(splits, role)
        tags.update({split_tag(role): split.name, split_size_tag(role): len(split)})
    return tags


def split_inputs(splits: Splits) -> list[tuple[str, str, str]]:
    """(name, digest of its image ids, context) of each distinct split a trial reads: its
    MLflow dataset inputs, so runs on different splits (a search's tune part, a confirmation's
    report part) are told apart in the runs table. MLflow keeps one input per dataset, so a
    split both trained on and scored (the synthetic train scenes) has context
    ``training, scoring``."""
    inputs: dict[str, tuple[str, list[str]]] = {}
    for role in SPLIT_ROLES:
        split = getattr(splits, role)
        digest = hashlib.sha256("\n".join(split.ids).encode()).hexdigest()[:16]
        contexts = inputs.setdefault(split.name, (digest, []))[1]
        if SPLIT_CONTEXTS[role] not in contexts:
            contexts.append(SPLIT_CONTEXTS[role])
    return [(name, digest, ", ".join(contexts)) for name, (digest, contexts) in inputs.items()]


def seed_values(per_seed: Mapping[int, Mapping[str, float]], metric: str, prefix: str) -> dict[str, float]:
    """The metrics a search run logs for its seeds: each key's mean over the seeds as
    ``<prefix><key>`` (``prefix`` = ``tune_`` when scored on the tune split), and with 2+ seeds
    each seed's ``<prefix><metric>_seed<k>`` for the objective and the mIoUs."""
    seeds = list(per_seed)
    keys = [k for k in per_seed[seeds[0]] if all(k in per_seed[s] for s in seeds)]
    out = {f"{prefix}{k}": sum(per_seed[s][k] for s in seeds) / len(seeds) for k in keys}
    if len(seeds) > 1:
        for m in dict.fromkeys([metric, "pseudo_miou", "pseudo_miou_crf", "seg_miou"]):
            for s in seeds:
                if m in per_seed[s]:
                    out[seed_metric(m, s, prefix)] = per_seed[s][m]
    return out


def _train_seeds(ctx: TrialContext, trial, life, job: Job, seeds: list[int]) -> tuple[dict, tuple, list]:
    """The pipeline once per training seed; returns (metrics per seed, the first seed's
    (config, per-class table, pseudo labels), the checkpoint and label paths used)."""
    per_seed, first, paths = {}, None, []
    for i, seed in enumerate(seeds):
        cfg = with_seed(job.config, seed)
        key = job.key if i == 0 else f"{job.key}|seed={seed}"
        paths.append(job_paths(ctx.workdir, key))
        suffix = "" if i == 0 else f"_seed{seed}"  # per-epoch metrics: the first seed's plain
        monitor, prune = i == 0 and job.stage != Stage.CONFIRM, job.stage == Stage.SEARCH
        metrics, table, pseudo = train_and_score(ctx, trial, life.run_id, cfg, key, paths[-1], suffix, monitor, prune)
        per_seed[seed] = metrics
        first = first or (cfg, table, pseudo)
    return per_seed, first, paths


def objective_metric(study) -> str:
    """The metric a trial's Optuna value is: the search's, else a grid study's pseudo-label mIoU."""
    return study.search.metric if study.search else "pseudo_miou"


def run_trial(ctx: TrialContext, trial: optuna.Trial) -> TrialState:
    """Run a claimed (RUNNING) trial to its end; return its final state. Never raises for a
    failing trial (it is marked FAIL in Optuna and FAILED in MLflow); re-raises interrupts and
    a failing MLflow store (:class:`TrackingStoreError`).

    A search trial trains its configuration once per ``search.seeds`` seed on the search splits
    (objective and pruning monitor on the tune images where ``search.tune`` is set; its metrics
    then prefixed ``tune_``); the objective is the mean over the seeds, each seed's value is
    logged too. Pruning reads the first seed's epochs. Other trials train once."""
    t_start = time.perf_counter()
    job = claimed_job(ctx, trial)
    study, tctx = ctx.study, ctx.for_stage(job.stage)
    seeds = study.search.seeds if job.stage == Stage.SEARCH else [job.seed]
    prefix = "tune_" if job.stage == Stage.SEARCH and tctx.tune is not None else ""
    objective = objective_metric(study)
    paths = []
    with TrialLifecycle(ctx, trial, job) as life:
        ctx.tracker.set_tags(life.run_id, split_tags(tctx.splits))
        ctx.tracker.log_datasets(life.run_id, split_inputs(tctx.splits))
        if job.stage == Stage.SEARCH:
            ctx.tracker.set_tags(life.run_id, {Tag.SEARCH_SEEDS: ",".join(map(str, seeds))})
        per_seed, first, paths = _train_seeds(tctx, trial, life, job, seeds)
        metrics = seed_values(per_seed, objective, prefix)
        metrics["trial_seconds"] = time.perf_counter() - t_start
        ctx.tracker.log_metrics(life.run_id, metrics, step=job.config.train.epochs)
        write_artifacts(ctx.tracker, life.run_id, first[0], study, first[2], first[1], list(tctx.splits.class_names))
        life.value = metrics.get(prefix + objective)
        if life.value is None or life.value != life.value:
            raise ValueError(
                f"objective metric {objective!r} is missing or NaN; have: {', '.join(sorted(per_seed[seeds[0]]))}"
            )
    if life.state in (TrialState.COMPLETE, TrialState.PRUNED):
        for ckpt, label_root in paths:
            ckpt.unlink(missing_ok=True)
            shutil.rmtree(label_root, ignore_errors=True)
    return life.state
