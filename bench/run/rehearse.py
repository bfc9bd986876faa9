"""``bench run STUDY --rehearse``: every stage of each distinct configuration of a study, on the
first few images of its own data for a few steps, measured; and the whole study's cost
projected from the measurements (:mod:`bench.report.rehearsal`).

The stages are the product's own functions, called as :mod:`bench.run.pipeline` calls them:
``train_stage1`` (crossing the frozen-to-trainable boundary where the configuration has one,
with its per-epoch monitor and checkpoint), ``make_pseudo_labels`` (at ``pseudo.input_size``,
with the CRF), the trial's artifacts, ``stage2_labels`` and ``train_and_score_stage2`` (stage 2
at its crop size, then scored at native resolution with its scales and flips). They stop after
``steps`` steps an epoch (``max_steps``, an execution limit). Checkpoints and labels go to a
temporary folder (``--keep DIR`` keeps them); no Optuna study and no MLflow run is made.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from tkp_pcl.config import MethodConfig
from tkp_pcl.data import Splits

from ..report.rehearsal import Projection, StageRow
from ..study import Study, config_hash, confirm_total, input_error_types, search_variant, study_jobs, variant_config

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class RehearsalError(Exception):
    """A stage of a variant's rehearsal failed: one line naming both, and the error."""

    def __init__(self, variant: str, stage: str, error: BaseException):
        super().__init__(variant, stage, error)
        self.variant, self.stage, self.error = variant, stage, error

    def __str__(self) -> str:
        lines = [ln.strip() for ln in str(self.error).strip().splitlines() if ln.strip()]
        if lines and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
            return f"rehearsal of {self.variant}: {self.stage}: in a DataLoader worker: {lines[-1]}"
        detail = f"{type(self.error).__name__}: {lines[0]}" if lines else type(self.error).__name__
        return f"rehearsal of {self.variant}: {self.stage}: {detail}"


@dataclass(frozen=True)
class RehearsalOptions:
    """``images``: the first N images of each split; ``steps``: optimizer steps an epoch;
    ``keep``: a folder for everything the rehearsal writes (else a temporary one)."""

    images: int = 4
    steps: int = 2
    keep: Path | None = None
    projection: Projection = field(default_factory=Projection)


@dataclass(frozen=True)
class Counts:
    """Images of the study's own data through each stage of one trial (all of each split)."""

    train: int
    pseudo: int
    val: int
    seg_train: int
    seg_todo: int  # stage 2's training images outside the pseudo split: labelled for stage 2

    @classmethod
    def of(cls, s: Splits) -> Counts:
        todo = len(set(s.seg_train.ids) - set(s.pseudo.ids))
        return cls(len(s.train), len(s.pseudo), len(s.val), len(s.seg_train), todo)


def configurations(study: Study) -> list[tuple[str, MethodConfig, int]]:
    """(variant, configuration, training runs in the study) for each distinct configuration:
    each variant's first job (one seed), or a search's searched variant (its trials x training
    seeds, plus the confirmation runs)."""
    if study.search is not None:
        v = search_variant(study)
        runs = study.search.n_trials * len(study.search.seeds or [study.search.seed]) + confirm_total(study)
        return [(v, variant_config(study, v), runs)]
    jobs = study_jobs(study)
    return [
        (v, next(j.config for j in jobs if j.variant == v), sum(j.variant == v for j in jobs)) for v in study.variants
    ]


def rehearsal_config(cfg: MethodConfig) -> MethodConfig:
    """``cfg`` cut to a rehearsal: stage 1 for its frozen epochs and one more (the boundary
    crossed where there is one), a one-image monitor, one stage-2 epoch."""
    out = cfg.model_copy(deep=True)
    out.train.epochs = cfg.train.frozen_epochs + 1
    out.train.monitor_images = min(cfg.train.monitor_images, 1)
    out.segment.epochs = 1
    return out


def first_images(splits: Splits, n: int) -> Splits:
    """The first ``n`` images of every split (stage 2's training split included)."""

    def first(s):
        return s.subset(range(min(n, len(s))))

    return Splits(
        first(splits.train), first(splits.pseudo), first(splits.val), splits.loader_workers, first(splits.seg_train)
    )


@contextmanager
def stage(variant: str, name: str | Callable[[BaseException], str]):
    """Any error inside becomes a :class:`RehearsalError` naming ``variant`` and the stage
    (``name``, or what ``name(error)`` says)."""
    try:
        yield
    except RehearsalError:
        raise
    except Exception as e:
        raise RehearsalError(variant, name if isinstance(name, str) else name(e), e) from e


def _in_traceback(e: BaseException, function: str) -> bool:
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == function:
            return True
        tb = tb.tb_next
    return False


class LocalTracker:
    """Stands in for the MLflow tracker: a metric logged marks the meter (the end of a stage-2
    epoch); artifacts are copied under ``out/<run>`` (``--keep``) or dropped."""

    def __init__(self, meter, out: Path | None):
        self.meter, self.out, self.metrics = meter, out, []

    def _dir(self, run_id: str) -> Path | None:
        if self.out is None:
            return None
        d = self.out / "artifacts" / run_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    def log_metrics(self, run_id: str, metrics: dict, step: int = 0) -> None:
        self.metrics.append(metrics)
        self.meter.mark()

    def log_artifact(self, run_id: str, path, artifact_path: str | None = None) -> None:
        if (d := self._dir(run_id)) is not None:
            shutil.copy(path, d / Path(path).name)

    def log_table(self, run_id: str, data, artifact_file: str) -> None:
        if (d := self._dir(run_id)) is not None:
            (d / artifact_file).write_text(data.to_json(orient="records"))

    def set_tags(self, run_id: str, tags: dict) -> None:
        pass


@dataclass
class Plan:
    """What one variant's rehearsal works with."""

    variant: str
    cfg: MethodConfig
    runs: int
    splits: Splits
    counts: Counts
    work: Path
    keep: bool


def rehearse_stages(study: Study, plan: Plan, meter, steps: int, after_stage1: bool = True) -> dict:
    """Run the stages of one configuration, each measured (:class:`~.measure.Span`); with
    ``after_stage1`` False, stage 1 only (no monitor). Returns the spans and what the rows
    need. Raises :class:`RehearsalError`."""
    from tkp_pcl.stage1 import checkpoint, train_stage1

    from .pipeline import TrialContext

    v, cfg, s = plan.variant, plan.cfg, plan.splits
    rcfg, hist = rehearsal_config(cfg), []
    if not after_stage1:  # the monitor is a pseudo-label forward: measured with the earlier variant's
        rcfg.train.monitor_images = 0
    tracker = LocalTracker(meter, plan.work if plan.keep else None)
    out: dict = {"stage1_history": hist, "tracker": tracker, "steps": steps}
    ctx = TrialContext(study, None, tracker, "", plan.work, s, on_progress=lambda *_: None, max_steps=steps)

    def stage1_name(e: BaseException) -> str:
        phase = "frozen" if len(hist) < cfg.train.frozen_epochs else "trainable"
        where = "monitor" if _in_traceback(e, "monitor_miou") else "stage 1"
        return f"{where} (epoch {len(hist)}, {phase})" if cfg.train.frozen_epochs else where

    with stage(v, stage1_name), meter.span() as out["stage1"]:
        meta = checkpoint.make_meta(config_hash(cfg), v, cfg)
        result = train_stage1(
            rcfg,
            s,
            on_epoch_end=lambda e, m: (meter.mark(), hist.append(m)),
            checkpoint_path=plan.work / f"{v}.ckpt",
            progress=False,
            checkpoint_meta=meta,
            max_steps=steps,
        )
    if after_stage1:
        _later_stages(study, plan, meter, ctx, rcfg, result, out)
    return out


def _later_stages(study: Study, plan: Plan, meter, ctx, rcfg, result, out: dict) -> None:
    """Pseudo labels, their artifacts, stage-2 pseudo labels, stage 2 training and evaluation,
    each measured into ``out``."""
    from tkp_pcl.pseudo import make_pseudo_labels

    from .pipeline import N_EXAMPLES, final_metrics, stage2_labels, train_and_score_stage2, write_artifacts

    v, cfg, s, tracker = plan.variant, plan.cfg, plan.splits, out["tracker"]
    label_root = plan.work / "pseudo" / v
    with stage(v, "pseudo labels"), meter.span() as out["pseudo"]:
        pseudo = make_pseudo_labels(
            result.model,
            s.pseudo,
            cfg.pseudo,
            result.device,
            keep_examples=N_EXAMPLES,
            out_dir=label_root if cfg.segment.enabled else None,
            progress=False,
        )
    with stage(v, "artifacts"):
        _, table = final_metrics(pseudo.conf, pseudo.conf_crf, s.class_names)
        write_artifacts(tracker, v, cfg, study, pseudo, table, list(s.class_names))
    if not cfg.segment.enabled:
        return
    with stage(v, "stage-2 pseudo labels"), meter.span() as out["seg_labels"]:
        label_dir, _ = stage2_labels(ctx, rcfg, result, label_root)
    del result, pseudo
    with (
        stage(v, lambda e: "stage 2 evaluation" if out["stage2"].marks else "stage 2 training"),
        meter.span() as out["stage2"],
    ):
        train_and_score_stage2(ctx, rcfg, v, label_dir)


def _stage1_rows(plan: Plan, out: dict, pseudo_fpi: float, monitored: bool) -> list[StageRow]:
    """Stage 1 per phase (the monitor's FLOPs, one pseudo-label forward an image, taken out of
    each epoch's count) and, where ``monitored``, the monitor (with the checkpoint) per image."""
    span, hist, tc = out["stage1"], out["stage1_history"], plan.cfg.train
    starts = [(span.t0, 0), *span.marks[:-1]]
    n_mon = min(tc.monitor_images, 1, len(plan.splits.val)) if monitored else 0
    batch = min(tc.batch_size, len(plan.splits.train))
    rows = []
    phases = [
        ("frozen", range(tc.frozen_epochs), tc.frozen_epochs),
        ("trainable", range(tc.frozen_epochs, tc.frozen_epochs + 1), tc.epochs - tc.frozen_epochs),
    ]
    for phase, epochs, real_epochs in phases:
        if not epochs:
            continue
        imgs = sum(round(hist[e]["images_per_second"] * hist[e]["epoch_seconds"]) for e in epochs)
        flops = sum(span.marks[e][1] - starts[e][1] - n_mon * pseudo_fpi for e in epochs)
        secs = sum(hist[e]["epoch_seconds"] for e in epochs)
        name = f"stage 1 ({phase})" if tc.frozen_epochs else "stage 1"
        rows.append(
            StageRow(
                plan.variant,
                name,
                f"{math.ceil(imgs / batch)} step(s) of {batch}",
                secs / imgs,
                flops / imgs,
                span.rss,
                span.cuda,
                plan.counts.train * real_epochs * plan.runs,
            )
        )
    if n_mon:
        last = len(hist) - 1
        gap = span.marks[last][0] - starts[last][0] - hist[last]["epoch_seconds"]
        size = plan.cfg.pseudo.input_size or plan.cfg.model.img_size
        images = tc.epochs * min(tc.monitor_images, plan.counts.val) * plan.runs
        rows.append(
            StageRow(
                plan.variant,
                "monitor",
                f"{n_mon} image at {size} px",
                gap / n_mon,
                pseudo_fpi,
                span.rss,
                span.cuda,
                images,
                "with the checkpoint",
            )
        )
    return rows


def _pseudo_rows(plan: Plan, out: dict) -> list[StageRow]:
    """Pseudo labels of the pseudo split, and of stage 2's other training images (at the pseudo
    split's rate where none of the rehearsal's images needs one)."""
    cfg, span = plan.cfg, out["pseudo"]
    n, size = len(plan.splits.pseudo), cfg.pseudo.input_size or cfg.model.img_size
    crf = f" + CRF ({cfg.pseudo.workers} workers)" if cfg.pseudo.crf.enabled else ""
    rows = [
        StageRow(
            plan.variant,
            "pseudo labels",
            f"{n} images at {size} px{crf}",
            span.seconds / n,
            span.flops / n,
            span.rss,
            span.cuda,
            plan.counts.pseudo * plan.runs,
        )
    ]
    if cfg.segment.enabled:
        labels, todo = out["seg_labels"], len(set(plan.splits.seg_train.ids) - set(plan.splits.pseudo.ids))
        images = plan.counts.seg_todo * plan.runs
        if todo:
            rows.append(
                StageRow(
                    plan.variant,
                    "stage-2 pseudo labels",
                    f"{todo} images",
                    labels.seconds / todo,
                    labels.flops / todo,
                    labels.rss,
                    labels.cuda,
                    images,
                )
            )
        else:
            rows.append(
                replace(
                    rows[0],
                    stage="stage-2 pseudo labels",
                    measured="none needed here",
                    images=images,
                    note="at the pseudo labels' rate",
                )
            )
    return rows


def _stage2_rows(plan: Plan, out: dict, sampler) -> list[StageRow]:
    """Stage 2's training steps and its evaluation, split at the end of its (one) epoch."""
    seg, span, s = plan.cfg.segment, out["stage2"], plan.splits
    t_mark, f_mark = span.marks[0]
    n, b = len(s.seg_train), seg.batch_size
    per_batch, batches = (b, n // b) if n >= b else (n, 1)
    steps = min(out["steps"], batches)
    train_s = out["tracker"].metrics[-1]["seg_epoch_seconds"]
    crop = seg.crop_size or plan.cfg.model.img_size
    scales = ",".join(f"{x:g}" for x in seg.eval_scales) + (" + flip" if seg.eval_flip else "")
    t_end, nv = span.t0 + span.seconds, len(s.val)
    return [
        StageRow(
            plan.variant,
            "stage 2 training",
            f"{steps} step(s) of {per_batch} at {crop} px",
            train_s / (steps * per_batch),
            f_mark / (steps * per_batch),
            sampler.peak(span.t0, t_mark),
            span.cuda,
            seg.epochs * plan.counts.seg_train * plan.runs,
        ),
        StageRow(
            plan.variant,
            "stage 2 evaluation",
            f"{nv} images, scales {scales}",
            (t_end - t_mark) / nv,
            (span.flops - f_mark) / nv,
            sampler.peak(t_mark, t_end),
            span.cuda,
            plan.counts.val * plan.runs,
        ),
    ]


def variant_rows(plan: Plan, out: dict, sampler, earlier: tuple[list[StageRow], int] | None) -> list[StageRow]:
    """The rows of one variant; ``earlier``: (rows after stage 1, runs) of an earlier variant
    with the same model, pseudo-label and stage-2 configuration, not run again: its rates, this
    variant's images."""
    if earlier is not None:
        rows, runs = earlier
        after = [
            replace(r, variant=plan.variant, images=r.images * plan.runs / runs, note=f"as {r.variant}") for r in rows
        ]
        pseudo = next(r for r in rows if r.stage == "pseudo labels")
        return _stage1_rows(plan, out, pseudo.flops_per_image, monitored=False) + after
    after = _pseudo_rows(plan, out)
    if plan.cfg.segment.enabled:
        after += _stage2_rows(plan, out, sampler)
    return _stage1_rows(plan, out, after[0].flops_per_image, monitored=True) + after


def after_stage1_key(cfg: MethodConfig) -> str:
    """What the stages after stage 1 depend on: the model's shape, pseudo labels, stage 2."""
    return json.dumps(
        [cfg.model.model_dump(mode="json"), cfg.pseudo.model_dump(mode="json"), cfg.segment.model_dump(mode="json")],
        sort_keys=True,
    )


def rehearse(study: Study, path: str, opts: RehearsalOptions) -> tuple[list[StageRow], dict]:
    """Rehearse every distinct configuration of ``study`` (module docstring); the rows of all
    and what was measured about the machine. Raises :class:`RehearsalError` (a stage failed) or
    :class:`~bench.study.StudyError` (the data)."""
    from .measure import Meter, RssSampler, matmul_gflops
    from .startup import load_data

    about = {
        "study": study.name,
        "images": opts.images,
        "steps": opts.steps,
        "machine": platform.node(),
        "matmul_gflops_fp32": matmul_gflops(),
    }
    with stage("the study", "data"):
        splits, _ = load_data(study, path)
        counts, small = Counts.of(splits), first_images(splits, opts.images)
    rows: list[StageRow] = []
    done: dict[str, tuple[list[StageRow], int]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-rehearse-") as tmp,
        RssSampler() as sampler,
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings(
            "ignore", message="This DataLoader will create"
        )  # loader_workers > cores: said once below
        work = opts.keep if opts.keep is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for variant, cfg, runs in configurations(study):
            plan = Plan(variant, cfg, runs, small, counts, work, opts.keep is not None)
            key = after_stage1_key(cfg)
            out = rehearse_stages(study, plan, Meter(sampler), opts.steps, after_stage1=key not in done)
            vrows = variant_rows(plan, out, sampler, done.get(key))
            done.setdefault(key, ([r for r in vrows if not r.stage.startswith("stage 1")], runs))
            rows += vrows
            if opts.keep is None:  # a paper-scale checkpoint is ~0.7 GB: one at a time
                shutil.rmtree(work / "pseudo", ignore_errors=True)
                (work / f"{variant}.ckpt").unlink(missing_ok=True)
    return rows, about


def rehearse_command(study: Study, path: str, opts: RehearsalOptions) -> int:
    """``bench run STUDY --rehearse``: rehearse, print the table, write ``rehearsal.csv|json``
    (under ``--keep DIR``, else ``reports/<study>/``); one line and exit 1 (2: bad input) when a
    stage fails."""
    from rich.console import Console

    from ..report.rehearsal import table, write

    try:
        rows, about = rehearse(study, path, opts)
    except RehearsalError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT if isinstance(e.error, input_error_types()) else EXIT_FAILED
    console = Console() if sys.stdout.isatty() else Console(width=170)
    title = (
        f"rehearsal of {study.name}: {opts.images} images, {opts.steps} steps (this machine: "
        f"{about['matmul_gflops_fp32']:.0f} GFLOP/s fp32 matmul)"
    )
    console.print(table(rows, opts.projection, title))
    out = opts.keep if opts.keep is not None else Path("reports") / study.name
    csv_path, json_path = write(rows, opts.projection, out, about)
    console.print(f"every stage ran; written: {csv_path} and {json_path}", highlight=False)
    return 0


def rehearse_from_args(study: Study, args) -> int:
    """``bench run --rehearse`` with its flags (``--images``, ``--steps``, ``--keep``,
    ``--accelerator``, ``--utilisation``); a bad flag is a :class:`~bench.study.StudyError`."""
    from ..report.rehearsal import ACCELERATORS
    from ..study import StudyError

    if args.images < 2 or args.steps < 1:  # a batch of 1 fails in BatchNorm (DeepLab) where the study's would not
        raise StudyError(f"--images must be >= 2 and --steps >= 1 (got {args.images}, {args.steps})")
    names = {k.lower(): k for k in ACCELERATORS}
    if args.accelerator.lower() not in names:
        raise StudyError(f"--accelerator: one of {', '.join(ACCELERATORS)} (got {args.accelerator!r})")
    if not 0 < args.utilisation <= 1:
        raise StudyError(f"--utilisation must be in (0, 1] (got {args.utilisation})")
    proj = Projection(names[args.accelerator.lower()], args.utilisation)
    keep = Path(args.keep) if args.keep else None
    return rehearse_command(study, args.study, RehearsalOptions(args.images, args.steps, keep, proj))
