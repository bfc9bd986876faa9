"""The method's pipeline for one configuration and seed, as a trial runs it: stage 1 (resumed
from a checkpoint where one fits), pseudo labels scored against the masks, stage 2 trained on
the pseudo labels and scored on val; with the run's metrics, artifacts and checkpoint policy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import yaml

from tkp_pcl.config import MethodConfig
from tkp_pcl.data import Split, Splits, seg_train_split_name, unscored
from tkp_pcl.metrics import miou
from tkp_pcl.pseudo import make_pseudo_labels
from tkp_pcl.stage1 import Checkpoint, Stage1Result, checkpoint, train_stage1
from tkp_pcl.stage2 import Stage2Inputs, train_segmentation

from ..records import Attr, Stage, discarded_tag, resumed_tag
from ..report.overlay import example_rows, overlay_grid, save_png
from ..signals import raise_if_stopping
from ..stores import Tracker
from ..study import config_hash, study_jobs
from .splits import TuneSplits

N_EXAMPLES = 8
Progress = Callable[[str, int, int], None]  # (trial label, epochs done, epochs total)


@dataclass
class TrialContext:
    """What every trial of a study shares inside one worker process: the study, its stores, the
    data this process loaded (``splits``; ``tune``: the tune / report splits of a search with
    ``search.tune``), a progress callback and DDP's hook before each stage-1 training.
    ``max_steps``: an execution limit (``bench run --rehearse``): every epoch of stage 1 and
    stage 2 stops after that many steps; None (trials) runs whole epochs."""

    study: Any
    optuna_study: optuna.Study
    tracker: Tracker
    parent_run_id: str
    workdir: Path
    splits: Splits
    tune: TuneSplits | None = None
    on_progress: Progress | None = None
    before_stage1: Callable[[MethodConfig, Path], None] | None = None  # (config, checkpoint)
    max_steps: int | None = None

    def for_stage(self, stage: str) -> TrialContext:
        """This context with the splits of a trial of ``stage``: a search trial reads the masks
        of the tune images only; a confirmation run scores the report images."""
        if self.tune is None or stage == Stage.GRID:
            return self
        return dataclasses.replace(self, splits=self.tune.search if stage == Stage.SEARCH else self.tune.report)

    @property
    def jobs(self) -> list:
        return study_jobs(self.study)


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
    tracker: Tracker, run_id: str, cfg: MethodConfig, study, pseudo, table: pd.DataFrame, names: list[str]
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
            stage1.model,
            _counting(unscored(split.subset(todo)), report),
            cfg.pseudo,
            stage1.device,
            out_dir=label_root,
            use_crf=crf,
            progress=ctx.on_progress is None,
        )
    seconds = time.perf_counter() - t0
    return label_root / ("pseudo_crf" if crf else "pseudo"), {
        "seg_pseudo_seconds": seconds,
        "seg_train_images": len(split),
    }


def run_stage2(
    ctx: TrialContext, cfg: MethodConfig, run_id: str, label_root: Path, stage1: Stage1Result
) -> dict[str, float]:
    """Make the pseudo labels of stage 2's training split (``data.seg_train_split``; the run's
    param ``segment.train_split``), train the segmentation network on them, score it on val."""
    label_dir, metrics = stage2_labels(ctx, cfg, stage1, label_root)
    return {**metrics, **train_and_score_stage2(ctx, cfg, run_id, label_dir)}


def train_and_score_stage2(ctx: TrialContext, cfg: MethodConfig, run_id: str, label_dir: Path) -> dict[str, float]:
    """Train the segmentation network on the pseudo labels in ``label_dir`` (per-epoch metrics
    logged), score it on val; its overlay and confusion matrix as artifacts; its metrics."""
    tracker = ctx.tracker
    inputs = Stage2Inputs(
        ctx.splits.seg_train,
        label_dir,
        ctx.splits.val,
        seed=cfg.train.seed,
        device=cfg.train.device,
        loader_workers=ctx.splits.loader_workers,
    )
    seg = train_segmentation(
        cfg.segment,
        cfg.model,
        inputs,
        keep_examples=N_EXAMPLES,
        progress=False,
        max_steps=ctx.max_steps,
        on_epoch_end=lambda epoch, m: tracker.log_metrics(run_id, m, step=epoch),
    )
    mean, per = miou(seg.conf)
    names = list(ctx.splits.class_names)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        save_png(overlay_grid(example_rows(seg.examples)), d / "seg_overlay.png")
        pd.DataFrame(seg.conf, index=names, columns=names).to_csv(d / "confusion_matrix_seg.csv")
        for f in sorted(d.iterdir()):
            tracker.log_artifact(run_id, f)
    return {"seg_miou": mean, "seg_seconds": seg.seconds, **{f"seg_iou_{class_key(c)}": v for c, v in zip(names, per)}}


def train_and_score(
    ctx: TrialContext,
    trial: optuna.Trial,
    run_id: str,
    cfg: MethodConfig,
    key: str,
    paths: tuple[Path, Path],
    suffix: str,
    monitor: bool,
    prune: bool,
) -> tuple[dict[str, float], pd.DataFrame, Any]:
    """Stage 1 (resumed from ``key``'s checkpoint where one fits), pseudo labels of
    ``ctx.splits.pseudo`` and stage 2 where enabled, for one configuration and seed. Per-epoch
    metrics are logged with ``suffix`` on their names; with ``monitor`` the held-out mIoU feeds
    ``trial.report`` (and, with ``prune``, the pruner: a search trial's first seed; a confirmation
    run reports nothing). Returns (final metrics, per-class table, pseudo labels)."""
    ckpt, label_root = paths
    label_root = label_root if cfg.segment.enabled else None
    label, chash = f"{key} (trial {trial.number})", config_hash(cfg)
    pruning = monitor and prune and ctx.study.search is not None and ctx.study.search.pruner != "none"

    def log(metrics: dict[str, float], step: int) -> None:
        ctx.tracker.log_metrics(run_id, {f"{k}{suffix}": v for k, v in metrics.items()}, step=step)

    state = _resumable(ctx, run_id, ckpt, chash, suffix, log)
    on_epoch_end = _epoch_callback(ctx, trial, log, label, cfg.train.epochs, monitor, pruning)
    if ctx.on_progress:
        ctx.on_progress(label, 0, cfg.train.epochs)
    meta = checkpoint.make_meta(chash, key, cfg)
    if ctx.before_stage1:
        ctx.before_stage1(cfg, ckpt)
    t0 = time.perf_counter()
    result = train_stage1(
        cfg,
        ctx.splits,
        on_epoch_end=on_epoch_end,
        checkpoint_path=ckpt,
        progress=False,
        checkpoint_meta=meta,
        resume=state,
        max_steps=ctx.max_steps,
    )
    t1 = time.perf_counter()
    pseudo = make_pseudo_labels(
        result.model,
        ctx.splits.pseudo,
        cfg.pseudo,
        result.device,
        out_dir=label_root,
        keep_examples=N_EXAMPLES,
        progress=False,
    )
    metrics, table = final_metrics(pseudo.conf, pseudo.conf_crf, ctx.splits.class_names)
    metrics.update(train_seconds=t1 - t0, pseudo_seconds=pseudo.seconds)
    if cfg.segment.enabled:
        metrics.update(run_stage2(ctx, cfg, run_id, label_root, result))
    return metrics, table, pseudo


def _resumable(ctx: TrialContext, run_id: str, ckpt: Path, chash: str, suffix: str, log) -> Checkpoint | None:
    """The checkpoint a dead worker left for this configuration, its epochs logged again and the
    run tagged with where it resumes; None (with the reason tagged) when there is none to use."""
    state, discarded = usable_checkpoint(ckpt, chash)
    if discarded:
        ctx.tracker.set_tags(run_id, {discarded_tag(suffix): discarded})
    if state is not None:
        for step, row in enumerate(state.history):
            log(row, step)
        ctx.tracker.set_tags(run_id, {resumed_tag(suffix): len(state.history)})
    return state


def _epoch_callback(ctx: TrialContext, trial, log, label: str, epochs: int, monitor: bool, pruning: bool):
    """Stage 1's ``on_epoch_end``: log the epoch, show progress, report the held-out mIoU to
    Optuna (``monitor``) and prune when the pruner says so (``pruning``)."""

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        log(metrics, epoch)
        trial.set_user_attr(Attr.EPOCH, epoch + 1)
        if ctx.on_progress:
            ctx.on_progress(label, epoch + 1, epochs)
        # the epoch is checkpointed and logged: a soft stop (the pre-timeout signal) is due here,
        # as is an interrupt that landed where Python drops it (a __del__)
        raise_if_stopping()
        value = metrics["monitor_pseudo_miou"]
        if monitor and value == value:
            trial.report(value, epoch)
        if pruning and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (monitor mIoU {value:.4f})")

    return on_epoch_end


def _move_aside(path: Path, why: str) -> Path:
    dest = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(dest)
    return dest


def usable_checkpoint(path: Path, expected_hash: str) -> tuple[Checkpoint | None, str | None]:
    """(the checkpoint's state, None) when ``path`` holds a readable checkpoint made with the
    configuration ``expected_hash``; otherwise the file is moved aside (``.corrupt-<time>`` or
    ``.stale-<time>``), a warning naming it goes to stderr, and ``(None, reason)`` is returned,
    so the trial starts from scratch. ``(None, None)``: no checkpoint."""
    if not path.is_file():
        return None, None
    path = path.resolve()
    try:
        state = checkpoint.load(path)
    except checkpoint.CheckpointError as e:  # unreadable, empty or incomplete: start over
        dest = _move_aside(path, "corrupt")
        reason = f"unreadable checkpoint {path}: {e.reason}; moved to {dest.name}"
    else:
        got = state.config_hash
        if got == expected_hash:
            return state, None
        dest = _move_aside(path, "stale")
        reason = (
            f"checkpoint {path} made with configuration {got or 'unknown'}, not {expected_hash}; moved to {dest.name}"
        )
    print(f"bench: warning: {reason}; the trial starts from scratch", file=sys.stderr)
    return None, reason
