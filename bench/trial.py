"""One trial: an Optuna trial run as the method's stage 1 + pseudo labels, logged to one MLflow run."""

from __future__ import annotations

import dataclasses
import hashlib
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
import yaml

from tkp_pcl.config import MethodConfig
from tkp_pcl.data import Split, Splits, load_splits, seg_train_split_name, unscored
from tkp_pcl.metrics import miou
from tkp_pcl.pseudo import make_pseudo_labels
from tkp_pcl.segment import train_segmentation
from tkp_pcl.train import Stage1Result, distributed, load_checkpoint, train_stage1

from .overlay import example_rows, overlay_grid, save_png
from .storage import worker_identity
from .study import CategoricalParam, FloatParam, Study, flatten, job_config_for_search, search_variant, study_jobs
from .tracking import Tracker

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
    _splits: Splits | None = field(default=None, repr=False)

    @property
    def splits(self) -> Splits:
        if self._splits is None:
            self._splits = load_splits(self.study.data)
        return self._splits

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
    tracker.client.log_table(run_id, data=table, artifact_file="per_class_iou.json")


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
    """Make the pseudo labels of stage 2's training split (``data.seg_train_split``; logged as
    param ``segment.train_split``), train the segmentation network on them, score it on val."""
    tracker = ctx.tracker
    tracker.client.log_param(run_id, "segment.train_split", seg_train_split_name(ctx.study.data))
    label_dir, metrics = stage2_labels(ctx, cfg, stage1, label_root)
    seg = train_segmentation(
        cfg.segment, cfg.model, ctx.splits.seg_train, label_dir, ctx.splits.val,
        seed=cfg.train.seed, device=cfg.train.device, keep_examples=N_EXAMPLES, progress=False,
        loader_workers=ctx.splits.loader_workers, on_epoch_end=lambda epoch, m: tracker.log_metrics(run_id, m, step=epoch),
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


def run_trial(ctx: TrialContext, trial: optuna.Trial) -> optuna.trial.TrialState:
    """Run a claimed (RUNNING) trial to its end; return its final state. Never raises for a
    failing trial (it is marked FAIL in Optuna and FAILED in MLflow); re-raises interrupts."""
    t_start = time.perf_counter()
    study, tracker = ctx.study, ctx.tracker
    attrs = trial.user_attrs
    for k, v in worker_identity().items():
        trial.set_user_attr(k, v)
    if "job_key" in attrs:
        job = ctx.jobs[attrs["job_key"]]
        cfg, key, variant, seed = job.config, job.key, job.variant, job.seed
    else:
        cfg = sample_search_config(study, trial)
        variant, seed = search_variant(study), cfg.train.seed
        key = f"search|trial={trial.number}"
        for k, v in {"job_key": key, "variant": variant, "seed": seed}.items():
            trial.set_user_attr(k, v)
    label = f"{key} (trial {trial.number})"
    params = {f"data.{k}": v for k, v in flatten(study.data.model_dump(mode="json")).items()}
    params.update(flatten(cfg.model_dump(mode="json")))
    tags = {"bench.variant": variant, "bench.seed": seed, "bench.trial": trial.number, "bench.job_key": key,
            "bench.device": cfg.train.device, "bench.optuna_study": study.name,
            "bench.world_size": distributed()[2]}  # fmt: skip
    run_id = tracker.start_trial(ctx.parent_run_id, key.replace("|", " "), tags, params)
    trial.set_user_attr("mlflow_run_id", run_id)
    ckpt, label_root = job_paths(ctx.workdir, key)
    label_root = label_root if cfg.segment.enabled else None
    epochs = cfg.train.epochs
    try:
        if ckpt.is_file():  # a dead worker's progress: log what it had, then go on from there
            state = load_checkpoint(ckpt)
            for step, row in enumerate(state["history"].tolist()):
                tracker.log_metrics(run_id, dict(zip(state["history_keys"], row)), step=step)
            tracker.set_tags(run_id, {"bench.resumed_from_epoch": len(state["history"])})
        pruning = study.search is not None and study.search.pruner != "none"

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            tracker.log_metrics(run_id, metrics, step=epoch)
            trial.set_user_attr("epoch", epoch + 1)
            if ctx.on_progress:
                ctx.on_progress(label, epoch + 1, epochs)
            value = metrics["monitor_pseudo_miou"]
            if value == value:
                trial.report(value, epoch)
            if pruning and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} (monitor mIoU {value:.4f})")

        if ctx.on_progress:
            ctx.on_progress(label, 0, epochs)
        t0 = time.perf_counter()
        result = train_stage1(cfg, ctx.splits, on_epoch_end=on_epoch_end, checkpoint_path=ckpt, progress=False)
        t1 = time.perf_counter()
        pseudo = make_pseudo_labels(
            result.model, ctx.splits.pseudo, cfg.pseudo, result.device, out_dir=label_root,
            keep_examples=N_EXAMPLES, progress=False,
        )  # fmt: skip
        metrics, table = final_metrics(pseudo.conf, pseudo.conf_crf, ctx.splits.class_names)
        metrics.update(train_seconds=t1 - t0, pseudo_seconds=pseudo.seconds)
        if cfg.segment.enabled:
            metrics.update(run_stage2(ctx, cfg, run_id, label_root, result))
        metrics["trial_seconds"] = time.perf_counter() - t_start
        tracker.log_metrics(run_id, metrics, step=epochs)
        write_artifacts(tracker, run_id, cfg, study, pseudo, table, list(ctx.splits.class_names))
        objective = study.search.metric if study.search else "pseudo_miou"
        value = metrics.get(objective)
        if value is None or value != value:
            raise ValueError(f"objective metric {objective!r} is missing or NaN; have: {', '.join(sorted(metrics))}")
        ctx.optuna_study.tell(trial, value)
        tracker.end(run_id, "FINISHED")
        ckpt.unlink(missing_ok=True)
        if label_root is not None:
            shutil.rmtree(label_root, ignore_errors=True)
        return optuna.trial.TrialState.COMPLETE
    except optuna.TrialPruned as e:
        tracker.set_tags(run_id, {"bench.state": "PRUNED", "bench.pruned": str(e)})
        ctx.optuna_study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        tracker.end(run_id, "KILLED")
        ckpt.unlink(missing_ok=True)
        return optuna.trial.TrialState.PRUNED
    except Exception as e:
        tracker.set_tags(run_id, {"bench.state": "FAIL", "bench.error": f"{type(e).__name__}: {e}"})
        tracker.client.log_text(run_id, traceback.format_exc(), "error.txt")
        trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:500])
        ctx.optuna_study.tell(trial, state=optuna.trial.TrialState.FAIL)
        tracker.end(run_id, "FAILED")
        return optuna.trial.TrialState.FAIL
    except BaseException:  # interrupted: the trial is failed here, the checkpoint kept for a re-run
        ctx.optuna_study.tell(trial, state=optuna.trial.TrialState.FAIL)
        tracker.set_tags(run_id, {"bench.state": "FAIL", "bench.error": "interrupted"})
        tracker.end(run_id, "KILLED")
        raise
