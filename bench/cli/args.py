"""The command line: its parser, and the checks of a command's inputs (study file, store URLs,
data root) with light imports only, before anything is opened."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..study import Study, StudyError, check_data_root, load_study, with_execution_values
from ..study.resolve import quote
from ..study.urls import check_mlflow_uri, check_optuna_storage

# (argparse attribute, flag, environment variable, check) of the storage URLs a command may take
URL_SOURCES = (
    ("storage", "--storage", "BENCH_OPTUNA_STORAGE", check_optuna_storage),
    ("tracking_uri", "--tracking-uri", "MLFLOW_TRACKING_URI", check_mlflow_uri),
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="WSSS benchmark harness: TKP-PCL vs ViT-PCM and ablations")
    sub = p.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    worker = sub.add_parser("worker", help="join a study another `bench run` started (any machine)")
    _common(worker)
    worker.add_argument("--quiet", action="store_true", help="no progress display")
    _submit_parser(sub)
    ls = sub.add_parser("ls", help="studies in a storage and their progress per variant")
    ls.add_argument("--storage", help="Optuna storage (default: journal:.bench/optuna.journal)")
    rep = sub.add_parser("report", help="tables, plots and overlays of a study (Markdown, HTML, CSV, LaTeX)")
    rep.add_argument("study", help="study file, or a study name")
    rep.add_argument("--tracking-uri", help="MLflow tracking URI (as for run)")
    rep.add_argument("--storage", help="Optuna storage, for search studies (as for run)")
    rep.add_argument("--out", help="output folder (default: reports/<study>)")
    rep.add_argument(
        "--baseline", help="variant the others are compared with (default: the study's confirm.baseline, else vit-pcm)"
    )
    ui = sub.add_parser("ui", help="start the MLflow UI on the tracking store (127.0.0.1)")
    ui.add_argument("study", nargs="?", help="study file whose tracking URI to use")
    ui.add_argument("--tracking-uri")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    data = sub.add_parser("data", help="prepare data sets").add_subparsers(dest="data_command", required=True)
    cm = data.add_parser("coco-masks", help="class-id mask PNGs from COCO instance annotations (as ViT-PCM)")
    cm.add_argument("--instances", required=True, help="annotations/instances_{train,val}2014.json")
    cm.add_argument("--out", required=True, help="output folder, e.g. ROOT/SegmentationClass/train2014")
    cm.add_argument("--min-side", type=int, default=256, help="leave out images smaller than this on a side (256)")
    return p


def _common(sp: argparse.ArgumentParser) -> None:
    """The study file, the stores and the threads, as ``run`` and ``worker`` take them."""
    sp.add_argument("study", help="study file (studies/*.yaml)")
    sp.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, the study's, or sqlite:///mlflow.db)",
    )
    sp.add_argument(
        "--storage",
        help="Optuna storage: journal:PATH, sqlite:///PATH, postgresql://... (default: journal:.bench/optuna.journal)",
    )
    sp.add_argument(
        "--threads", type=int, help="torch CPU threads of this process's trials (overrides train.num_threads)"
    )


def _run_parser(sub) -> None:
    run = sub.add_parser("run", help="run (or resume) a study")
    _common(run)
    run.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    run.add_argument("--dry-run", action="store_true", help="print the trials and exit; writes nothing")
    run.add_argument(
        "--rehearse",
        action="store_true",
        help="run every stage of each configuration on a few images for "
        "a few steps, measure them and project the study's cost; no trial is recorded",
    )
    run.add_argument("--images", type=int, default=4, help="--rehearse: the first N images of each split (4)")
    run.add_argument("--steps", type=int, default=2, help="--rehearse: steps an epoch (2)")
    run.add_argument(
        "--keep", help="--rehearse: keep what it writes (checkpoints, labels, artifacts, rehearsal.csv|json) in DIR"
    )
    run.add_argument(
        "--accelerator",
        default="H100",
        help="--rehearse: GPU the GPU-hours are projected on (A100, H100, H200, L40S, V100; default H100)",
    )
    run.add_argument(
        "--utilisation", type=float, default=0.4, help="--rehearse: share of the GPU's peak bf16 FLOP/s assumed (0.4)"
    )


def _submit_parser(sub) -> None:
    sp = sub.add_parser("submit", help="run a study's workers as one Slurm job array (submitit), on shared stores")
    sp.add_argument("study", help="study file (studies/*.yaml)")
    sp.add_argument("--tracking-uri", help="MLflow tracking server or database URI every node reaches (as for run)")
    sp.add_argument("--storage", help="Optuna storage every node reaches: postgresql://... (as for run)")
    sp.add_argument("--workers", type=int, required=True, help="array tasks, each one `bench worker`")
    sp.add_argument(
        "--gpus-per-worker",
        type=int,
        help="GPUs of each worker; > 1: as many data-parallel ranks, one Slurm task each (default 0)",
    )
    sp.add_argument("--cpus-per-worker", type=int, help="CPUs (and torch threads) of each task or rank (default 1)")
    sp.add_argument(
        "--signal-delay",
        type=int,
        help="seconds before the time limit Slurm sends the pre-timeout signal: the worker stops at its "
        "epoch's end and the task is requeued (default 120)",
    )
    sp.add_argument("--partition", help="Slurm partition (default: cluster.partition, else Slurm's default)")
    sp.add_argument("--time", help="each task's time limit: MINUTES, HH:MM:SS or D-HH:MM:SS")
    sp.add_argument("--mem", help="each task's memory, as sbatch --mem (16G)")
    sp.add_argument("--slurm", action="append", metavar="KEY=VALUE", help="more sbatch options (qos=high); repeatable")
    sp.add_argument("--local-ok", action="store_true", help="allow SQLite / journal files (all tasks on one node)")


def study_file(args) -> str | None:
    """The study file a command names (``bench report`` also takes a bare study name)."""
    arg = getattr(args, "study", None)
    if arg and args.command == "report" and not (arg.endswith((".yaml", ".yml")) or Path(arg).is_file()):
        return None
    return arg


def _check_urls(args) -> None:
    """``--storage`` / ``--tracking-uri``, else their environment variables (the study's own
    values are checked by its schema), with the same checks, before anything is opened."""
    for attr, flag, env, check in URL_SOURCES:
        if not hasattr(args, attr):
            continue
        value, source = (getattr(args, attr), flag) if getattr(args, attr) else (os.environ.get(env), f"${env}")
        if value:
            try:
                check(value)
            except ValueError as e:
                raise StudyError(f"{source}: {e} (got {quote(value)})") from None


def validate_inputs(args) -> Study | None:
    """Read and check the command's inputs (study file, URLs, data root) with light imports
    only, once per process; raises :class:`StudyError`. Returns the study, if a file was named;
    ``--threads`` becomes its ``train.num_threads`` (one owner of the thread count)."""
    if "_study" in vars(args):
        return args._study
    _check_urls(args)
    path = study_file(args)
    study = load_study(path) if path else None
    if study is not None and args.command in ("run", "worker"):
        check_data_root(path, study)
        if getattr(args, "threads", None):
            study = with_execution_values(study, {"train.num_threads": args.threads})
    args._study = study
    return study


def store_urls(args, study: Study | None) -> tuple[str, str]:
    """The Optuna storage URL and the MLflow tracking URI (after the precedence rules)."""
    from ..stores import resolve_storage_url, resolve_tracking_uri

    return (
        resolve_storage_url(getattr(args, "storage", None), study.tracking.optuna_storage if study else None),
        resolve_tracking_uri(getattr(args, "tracking_uri", None), study.tracking.mlflow_uri if study else None),
    )
