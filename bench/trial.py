"""One trial: an Optuna trial run as the method's stage 1 + pseudo labels, logged to one MLflow run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState
import yaml

from tkp_pcl.config import MethodConfig
from tkp_pcl.data import Split, Splits, load_splits, seg_train_split_name, unscored
from tkp_pcl.metrics import miou
from tkp_pcl.pseudo import make_pseudo_labels
from tkp_pcl.stage2 import Stage2Inputs, train_segmentation
from tkp_pcl.runtime import distributed
from tkp_pcl.stage1 import Stage1Result, checkpoint, train_stage1

from .integrity import CONFIG_ATTR, DATA_ATTR, HASH_ATTR, data_json, run_config, stored_config, usable_checkpoint
from .search_protocol import (
    PROTOCOL_ATTR, ProtocolSplits, confirm_tags, protocol_json, protocol_splits, seed_values, stage_of, with_seed,
)  # fmt: skip
from .overlay import example_rows, overlay_grid, save_png
from .storage import worker_identity
from .study import (
    CategoricalParam, FloatParam, Study, StudyError, config_hash, flatten, job_config_for_search, search_variant, study_jobs,
    variant_config,
)  # fmt: skip
from .tracking import Tracker, TrackingStoreError

N_EXAMPLES = 8
Progress = Callable[[str, int, int], None]  # (trial label, epochs done, epochs total)


@dataclass
class TrialContext:
    """What every trial of a study shares inside one worker process."""

    study: Study
    optuna_study: optuna.Study
    tracker: Tracker
    parent_run_id: str
    workdir: Path
    on_progress: Progress | None = None
    before_stage1: Callable[[MethodConfig, Path], None] | None = None  # (config, checkpoint): DDP's rank 0 tells the others
    _splits: Splits | None = field(default=None, repr=False)
    _protocol: ProtocolSplits | None = field(default=None, repr=False)

    @property
    def splits(self) -> Splits:
        if self._splits is None:
            self._splits = load_splits(self.study.data)
        return self._splits

    @property
    def protocol(self) -> ProtocolSplits | None:
        """The tune / report splits of a search with ``search.tune`` (None without one)."""
        if self._protocol is None and self.study.search is not None and self.study.search.tune is not None:
            self._protocol = protocol_splits(self.study, self.splits)
        return self._protocol

    def for_stage(self, stage: str) -> "TrialContext":
        """This context with the splits of a trial of ``stage``: a search trial reads the masks
        of the tune images only; a confirmation run scores the report images."""
        if self.protocol is None or stage == "grid":
            return self
        return dataclasses.replace(self, _splits=self.protocol.search if stage == "search" else self.protocol.report)

    @property
    def jobs(self) -> dict[str, Any]:
        return {j.key: j for j in study_jobs(self.study)}


def sample_search_config(study: Study, trial: optuna.Trial) -> MethodConfig:
    params: dict[str, Any] = {}
    for path, spec in study.search.space.items():
        if isinstance(spec, FloatParam):
            params[path] = trial.suggest_float(path, spec.low, spec.high, log=spec.log)
        elif isinstance(spec, CategoricalParam):
            params[path] = trial.suggest_categorical(path, spec.choices)
        else:
            params[path] = trial.suggest_int(path, spec.low, spec.high, log=spec.log)
    return job_config_for_search(study, params)


def class_key(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def final_metrics(conf: np.ndarray, conf_crf: np.ndarray | None, class_names) -> tuple[dict, pd.DataFrame]:
    """Final mIoU metrics and the per-class table (class, iou, iou_crf)."""
    mean, per = miou(conf)
    out = {"pseudo_miou": mean, **{f"iou_{class_key(c)}": v for c, v in zip(class_names, per)}}
    table = pd.DataFrame({"class": list(class_names), "iou": per})
    if conf_crf is not None:
        mean_crf, per_crf = miou(conf_crf)
        out["pseudo_miou_crf"] = mean_crf
        out.update({f"iou_crf_{class_key(c)}": v for c, v in zip(class_names, per_crf)})
        table["iou_crf"] = per_crf
    return out, table


def write_artifacts(
    tracker: Tracker, run_id: str, cfg: MethodConfig, study: Study, pseudo, table: pd.DataFrame, names: list[str]
) -> None:
    """Resolved config, confusion matrices, per-class IoU table, overlay grid, example labels."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        resolved = {"data": study.data.model_dump(mode="json"), **cfg.model_dump(mode="json")}
        (d / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        pd.DataFrame(pseudo.conf, index=names, columns=names).to_csv(d / "confusion_matrix.csv")
        if pseudo.conf_crf is not None:
            pd.DataFrame(pseudo.conf_crf, index=names, columns=names).to_csv(d / "confusion_matrix_crf.csv")
        save_png(overlay_grid(example_rows(pseudo.examples)), d / "overlay.png")
        arrays = {f"{k}_{i}": ex[k] for i, ex in enumerate(pseudo.examples) for k in ex}
        np.savez_compressed(d / "examples.npz", **arrays)
        for f in sorted(d.iterdir()):
            tracker.log_artifact(run_id, f)
    tracker.log_table(run_id, table, "per_class_iou.json")


def job_paths(workdir: Path, key: str) -> tuple[Path, Path]:
    """A job's stage-1 checkpoint and its pseudo-label folder (kept until the trial ends)."""
    job_id = hashlib.sha256(key.encode()).hexdigest()[:16]
    return workdir / "checkpoints" / f"{job_id}.ckpt", workdir / "pseudo" / job_id


def _counting(split: Split, report: Callable[[int, int], None]) -> Split:
    """``split`` calling ``report(images loaded, total)`` as its images are read."""
    count = [0]

    def load_image(i: int) -> np.ndarray:
        count[0] += 1
        report(count[0], len(split))
        return split.load_image(i)

    return dataclasses.replace(split, load_image=load_image)


def stage2_labels(
    ctx: TrialContext, cfg: MethodConfig, stage1: Stage1Result, label_root: Path
) -> tuple[Path, dict[str, float]]:
    """Pseudo labels of stage 2's training split in ``label_root`` (CRF-refined where the study
    trains on those): the pseudo split's were written already, the rest of the split's images
    are predicted now (CRF in the process pool; never scored, masks not read)."""
    crf = cfg.pseudo.crf.enabled and cfg.segment.use_crf_labels
    split, done = ctx.splits.seg_train, set(ctx.splits.pseudo.ids)
    split.all_labels()  # from the masks, once (stage 1 has usually done it): subsets share them
    todo = [i for i, image_id in enumerate(split.ids) if image_id not in done]
    t0 = time.perf_counter()
    if todo:
        what = f"stage-2 pseudo labels ({seg_train_split_name(ctx.study.data)})"
        report = (lambda n, total: ctx.on_progress(what, n, total)) if ctx.on_progress else (lambda n, total: None)
        make_pseudo_labels(
            stage1.model, _counting(unscored(split.subset(todo)), report), cfg.pseudo, stage1.device,
            out_dir=label_root, use_crf=crf, progress=ctx.on_progress is None,
        )  # fmt: skip
    seconds = time.perf_counter() - t0
    return label_root / ("pseudo_crf" if crf else "pseudo"), {"seg_pseudo_seconds": seconds, "seg_train_images": len(split)}


def run_stage2(
    ctx: TrialContext, cfg: MethodConfig, run_id: str, label_root: Path, stage1: Stage1Result
) -> dict[str, float]:
    """Make the pseudo labels of stage 2's training split (``data.seg_train_split``; the run's
    param ``segment.train_split``), train the segmentation network on them, score it on val."""
    tracker = ctx.tracker
    label_dir, metrics = stage2_labels(ctx, cfg, stage1, label_root)
    inputs = Stage2Inputs(ctx.splits.seg_train, label_dir, ctx.splits.val, seed=cfg.train.seed, device=cfg.train.device,
                          loader_workers=ctx.splits.loader_workers)  # fmt: skip
    seg = train_segmentation(
        cfg.segment, cfg.model, inputs, keep_examples=N_EXAMPLES, progress=False,
        on_epoch_end=lambda epoch, m: tracker.log_metrics(run_id, m, step=epoch),
    )  # fmt: skip
    mean, per = miou(seg.conf)
    names = list(ctx.splits.class_names)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        save_png(overlay_grid(example_rows(seg.examples)), d / "seg_overlay.png")
        pd.DataFrame(seg.conf, index=names, columns=names).to_csv(d / "confusion_matrix_seg.csv")
        for f in sorted(d.iterdir()):
            tracker.log_artifact(run_id, f)
    metrics.update(seg_miou=mean, seg_seconds=seg.seconds)
    return {**metrics, **{f"seg_iou_{class_key(c)}": v for c, v in zip(names, per)}}


@dataclass
class TrialSpec:
    """What a claimed trial runs: its job, and the configuration stored with it (with this
    worker's execution settings)."""

    key: str
    variant: str
    seed: int
    grid: dict[str, Any]
    cfg: MethodConfig

    @property
    def config_hash(self) -> str:
        return config_hash(self.cfg)


def trial_spec(ctx: TrialContext, trial: optuna.Trial) -> TrialSpec:
    """The stored configuration of an enqueued job; a search trial's is sampled and stored now."""
    attrs, study = trial.user_attrs, ctx.study
    if "job_key" in attrs:
        key = attrs["job_key"]
        job = ctx.jobs.get(key)
        stored = stored_config(trial) or (job.config if job else None)
        if stored is None:
            raise StudyError(f"trial {trial.number} (job {key!r}) has no stored configuration and this file lacks the job")
        cfg = run_config(stored, job.config if job else _execution_source(study, attrs["variant"]))
        grid = json.loads(attrs.get("grid") or "{}")
        return TrialSpec(key, attrs["variant"], int(attrs["seed"]), grid, cfg)
    cfg = sample_search_config(study, trial)
    spec = TrialSpec(f"search|trial={trial.number}", search_variant(study), cfg.train.seed, {}, cfg)
    for k, v in {"job_key": spec.key, "variant": spec.variant, "seed": spec.seed,
                 CONFIG_ATTR: cfg.model_dump_json(), HASH_ATTR: spec.config_hash, DATA_ATTR: data_json(study),
                 PROTOCOL_ATTR: protocol_json(study)}.items():  # fmt: skip
        trial.set_user_attr(k, v)
    return spec


def _execution_source(study: Study, variant: str) -> MethodConfig:
    """This file's configuration whose execution settings a job it does not list (a
    confirmation job) runs with: its variant's, or the searched variant's."""
    return variant_config(study, variant if variant in study.variants else search_variant(study))


class TrialLifecycle:
    """One claimed trial from start to end, in one place: ``with TrialLifecycle(...) as life``
    starts its MLflow run (params = the resolved configuration; tags = variant, seed, grid axes,
    configuration hash, ...); the body sets ``life.value`` and returns; on leaving, the Optuna
    trial is told (``skip_if_finished=True``: the dead-trial sweep of another process may have
    failed it meanwhile), the run tagged and ended, and ``life.state`` set.

    A failing trial (any ``Exception``) is FAIL in Optuna and FAILED in MLflow and is not
    re-raised; pruned is PRUNED / KILLED. A failing MLflow store (:class:`TrackingStoreError`)
    fails the Optuna trial (the next ``bench run`` retries it) and is re-raised with the trial's
    number; an interrupt fails the trial, keeps its checkpoint and is re-raised.
    """

    def __init__(self, ctx: TrialContext, trial: optuna.Trial, spec: TrialSpec):
        self.ctx, self.trial, self.spec = ctx, trial, spec
        self.value: float | None = None
        self.state: TrialState | None = None
        self.run_id = ""

    def __enter__(self) -> "TrialLifecycle":
        ctx, spec, trial = self.ctx, self.spec, self.trial
        for k, v in worker_identity().items():
            trial.set_user_attr(k, v)
        params = {f"data.{k}": v for k, v in flatten(ctx.study.data.model_dump(mode="json")).items()}
        params.update(flatten(spec.cfg.model_dump(mode="json")))
        if spec.cfg.segment.enabled:
            params["segment.train_split"] = seg_train_split_name(ctx.study.data)
        tags = {"bench.variant": spec.variant, "bench.seed": spec.seed, "bench.trial": trial.number,
                "bench.job_key": spec.key, "bench.config_hash": spec.config_hash, "bench.device": spec.cfg.train.device,
                "bench.optuna_study": ctx.study.name, "bench.world_size": distributed()[2],
                **{f"bench.grid.{k}": v for k, v in spec.grid.items()}, **confirm_tags(trial.user_attrs)}  # fmt: skip
        try:
            self.run_id = ctx.tracker.start_trial(ctx.parent_run_id, spec.key.replace("|", " "), tags, params)
        except BaseException as e:
            self.__exit__(type(e), e, None)
            raise
        trial.set_user_attr("mlflow_run_id", self.run_id)
        return self

    def _tell(self, state: TrialState, value: float | None = None) -> None:
        """Tell Optuna; ``self.state`` is the state the trial really has afterwards (FAIL where
        another process's dead-trial sweep closed it first)."""
        self.state = self.ctx.optuna_study.tell(self.trial, value, state=state, skip_if_finished=True).state

    def _note_error(self, message: str) -> None:
        try:
            self.trial.set_user_attr("error", message[:500])
        except optuna.exceptions.UpdateFinishedTrialError:  # closed meanwhile by a dead-trial sweep
            pass

    def __exit__(self, exc_type, e, tb) -> bool:
        tracker, run = self.ctx.tracker, self.run_id
        if e is None:
            self._tell(TrialState.COMPLETE, self.value)
            if self.state != TrialState.COMPLETE:  # lost the race with a sweep: the result is not counted
                tracker.set_tags(run, {"bench.state": self.state.name, "bench.error": "closed by another process "
                                       "as dead before it finished (heartbeat missed); the next run retries it"})  # fmt: skip
            tracker.end(run, "FINISHED" if self.state == TrialState.COMPLETE else "FAILED")
            return False
        if isinstance(e, TrackingStoreError):
            e.trial = self.trial.number
            self._note_error(f"MLflow store failed: {e.detail}")
            self._tell(TrialState.FAIL)  # the run is left RUNNING; the next `bench run` ends it
            return False
        if isinstance(e, optuna.TrialPruned):
            self._tell(TrialState.PRUNED)
            tracker.set_tags(run, {"bench.state": "PRUNED", "bench.pruned": str(e)})
            tracker.end(run, "KILLED")
            return True
        self._note_error(f"{type(e).__name__}: {e}")
        self._tell(TrialState.FAIL)
        if not run:
            return False
        if isinstance(e, Exception):
            tracker.set_tags(run, {"bench.state": "FAIL", "bench.error": f"{type(e).__name__}: {e}"})
            tracker.log_text(run, "".join(traceback.format_exception(e)), "error.txt")
            tracker.end(run, "FAILED")
            return True
        tracker.set_tags(run, {"bench.state": "FAIL", "bench.error": "interrupted"})  # checkpoint kept
        tracker.end(run, "KILLED")
        return False


def split_tags(splits: Splits) -> dict[str, Any]:
    """``bench.split.<role>`` (the split's name) and ``bench.split.<role>_images`` for the
    splits a trial really reads: stage-1 training, pseudo labels scored, held-out / segmentation
    scored, stage-2 training (a search trial's tune split and a confirmation's report part
    included), so a report never has to infer them from the configuration."""
    roles = {"train": splits.train, "pseudo": splits.pseudo, "val": splits.val, "seg_train": splits.seg_train}
    tags: dict[str, Any] = {}
    for role, split in roles.items():
        tags.update({f"bench.split.{role}": split.name, f"bench.split.{role}_images": len(split)})
    return tags


def run_trial(ctx: TrialContext, trial: optuna.Trial) -> TrialState:
    """Run a claimed (RUNNING) trial to its end; return its final state. Never raises for a
    failing trial (it is marked FAIL in Optuna and FAILED in MLflow); re-raises interrupts and
    a failing MLflow store (:class:`TrackingStoreError`).

    A search trial trains its configuration once per ``search.seeds`` seed on the search splits
    (objective and pruning monitor on the tune images where ``search.tune`` is set; its metrics
    then prefixed ``tune_``); the objective is the mean over the seeds, each seed's value is
    logged too. Pruning reads the first seed's epochs. Other trials train once."""
    t_start = time.perf_counter()
    spec = trial_spec(ctx, trial)
    study, stage = ctx.study, stage_of(spec.key)
    tctx = ctx.for_stage(stage)
    seeds = study.search.seeds if stage == "search" else [spec.cfg.train.seed]
    prefix = "tune_" if stage == "search" and tctx.protocol is not None else ""
    objective = study.search.metric if study.search else "pseudo_miou"
    paths = []
    with TrialLifecycle(ctx, trial, spec) as life:
        ctx.tracker.set_tags(life.run_id, split_tags(tctx.splits))
        if stage == "search":
            ctx.tracker.set_tags(life.run_id, {"bench.search_seeds": ",".join(map(str, seeds))})
        per_seed, first = {}, None
        for i, seed in enumerate(seeds):
            cfg = with_seed(spec.cfg, seed)
            key = spec.key if i == 0 else f"{spec.key}|seed={seed}"
            paths.append(job_paths(ctx.workdir, key))
            suffix = "" if i == 0 else f"_seed{seed}"  # per-epoch metrics: the first seed's plain
            metrics, table, pseudo = train_and_score(tctx, trial, life.run_id, cfg, key, paths[-1], suffix,
                                                     monitor=i == 0 and stage != "confirm", prune=stage == "search")  # fmt: skip
            per_seed[seed] = metrics
            first = first or (cfg, table, pseudo)
        metrics = seed_values(per_seed, objective, prefix)
        metrics["trial_seconds"] = time.perf_counter() - t_start
        ctx.tracker.log_metrics(life.run_id, metrics, step=spec.cfg.train.epochs)
        write_artifacts(ctx.tracker, life.run_id, first[0], study, first[2], first[1], list(tctx.splits.class_names))
        life.value = metrics.get(prefix + objective)
        if life.value is None or life.value != life.value:
            raise ValueError(f"objective metric {objective!r} is missing or NaN; have: {', '.join(sorted(per_seed[seeds[0]]))}")
    if life.state in (TrialState.COMPLETE, TrialState.PRUNED):
        for ckpt, label_root in paths:
            ckpt.unlink(missing_ok=True)
            shutil.rmtree(label_root, ignore_errors=True)
    return life.state


def train_and_score(
    ctx: TrialContext, trial: optuna.Trial, run_id: str, cfg: MethodConfig, key: str, paths: tuple[Path, Path],
    suffix: str, monitor: bool, prune: bool,
) -> tuple[dict[str, float], pd.DataFrame, Any]:  # fmt: skip
    """Stage 1 (resumed from ``key``'s checkpoint where one fits), pseudo labels of
    ``ctx.splits.pseudo`` and stage 2 where enabled, for one configuration and seed. Per-epoch
    metrics are logged with ``suffix`` on their names; with ``monitor`` the held-out mIoU feeds
    ``trial.report`` (and, with ``prune``, the pruner: a search trial's first seed; a confirmation
    run reports nothing). Returns (final metrics, per-class table, pseudo labels)."""
    tracker, study = ctx.tracker, ctx.study
    ckpt, label_root = paths
    label_root = label_root if cfg.segment.enabled else None
    label, epochs, chash = f"{key} (trial {trial.number})", cfg.train.epochs, config_hash(cfg)
    pruning = monitor and prune and study.search is not None and study.search.pruner != "none"

    def log(metrics: dict[str, float], step: int) -> None:
        tracker.log_metrics(run_id, {f"{k}{suffix}": v for k, v in metrics.items()}, step=step)

    state, discarded = usable_checkpoint(ckpt, chash)
    if discarded:
        tracker.set_tags(run_id, {f"bench.checkpoint_discarded{suffix}": discarded})
    if state is not None:  # a dead worker's progress: log what it had, then go on from there
        for step, row in enumerate(state.history):
            log(row, step)
        tracker.set_tags(run_id, {f"bench.resumed_from_epoch{suffix}": len(state.history)})

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        log(metrics, epoch)
        trial.set_user_attr("epoch", epoch + 1)
        if ctx.on_progress:
            ctx.on_progress(label, epoch + 1, epochs)
        value = metrics["monitor_pseudo_miou"]
        if monitor and value == value:
            trial.report(value, epoch)
        if pruning and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (monitor mIoU {value:.4f})")

    if ctx.on_progress:
        ctx.on_progress(label, 0, epochs)
    meta = checkpoint.make_meta(chash, key, cfg)
    if ctx.before_stage1:
        ctx.before_stage1(cfg, ckpt)
    t0 = time.perf_counter()
    result = train_stage1(cfg, ctx.splits, on_epoch_end=on_epoch_end, checkpoint_path=ckpt, progress=False,
                          checkpoint_meta=meta, resume=state)  # fmt: skip
    t1 = time.perf_counter()
    pseudo = make_pseudo_labels(
        result.model, ctx.splits.pseudo, cfg.pseudo, result.device, out_dir=label_root,
        keep_examples=N_EXAMPLES, progress=False,
    )  # fmt: skip
    metrics, table = final_metrics(pseudo.conf, pseudo.conf_crf, ctx.splits.class_names)
    metrics.update(train_seconds=t1 - t0, pseudo_seconds=pseudo.seconds)
    if cfg.segment.enabled:
        metrics.update(run_stage2(ctx, cfg, run_id, label_root, result))
    return metrics, table, pseudo
