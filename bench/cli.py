"""``bench``: run, join, list, report and browse studies. Parses arguments and prints; the work
is done by :mod:`bench.run`, :mod:`bench.stores` and :mod:`bench.report`.

Exit codes: 0 done; 1 some trials failed (run again to retry them); 2 bad input (study file,
data, storage), with a one-line message on stderr; 130 / 143 stopped by SIGINT (Ctrl-C) /
SIGTERM, with one line (the trial is resumed by the same command; :mod:`bench.signals`).
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

from .records import Attr, StudyAttr
from .signals import PREEMPT, exit_code, signum_of, stop_on_signals
from .stores.errors import StoreError, TrackingStoreError  # light: no Optuna, no MLflow
from .study import (  # pydantic + PyYAML only: a bad file fails fast
    Study,
    StudyError,
    check_data_root,
    input_error_types,
    load_study,
    with_execution_values,
)
from .study.resolve import quote
from .study.urls import check_mlflow_uri, check_optuna_storage

EXIT_FAILED_TRIALS = 1
EXIT_BAD_INPUT = 2
DEFAULT_BASELINE = "vit-pcm"
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
# (argparse attribute, flag, environment variable, check) of the storage URLs a command may take
URL_SOURCES = (
    ("storage", "--storage", "BENCH_OPTUNA_STORAGE", check_optuna_storage),
    ("tracking_uri", "--tracking-uri", "MLFLOW_TRACKING_URI", check_mlflow_uri),
)


def _err(msg: str) -> int:
    print(f"bench: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _parser() -> argparse.ArgumentParser:
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


def _study_file(args) -> str | None:
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
    path = _study_file(args)
    study = load_study(path) if path else None
    if study is not None and args.command in ("run", "worker"):
        check_data_root(path, study)
        if getattr(args, "threads", None):
            study = with_execution_values(study, {"train.num_threads": args.threads})
    args._study = study
    return study


def store_urls(args, study: Study | None) -> tuple[str, str]:
    """The Optuna storage URL and the MLflow tracking URI (after the precedence rules)."""
    from .stores import resolve_storage_url, resolve_tracking_uri

    return (
        resolve_storage_url(getattr(args, "storage", None), study.tracking.optuna_storage if study else None),
        resolve_tracking_uri(getattr(args, "tracking_uri", None), study.tracking.mlflow_uri if study else None),
    )


def cmd_run(args) -> int:
    from rich.console import Console

    from .run import finish_parent, prepare, queue, run_in_process, run_workers, start, wait_for_others

    study = validate_inputs(args)
    storage_url, tracking_uri = store_urls(args, study)
    if args.workers < 1:
        return _err("--workers must be >= 1")
    if args.dry_run:
        return dry_run(study, tracking_uri)
    if args.rehearse:
        from .run.rehearse import rehearse_from_args

        return rehearse_from_args(study, args)
    console = Console(stderr=True)
    h = start(study, args.study, storage_url, tracking_uri, create=True)
    try:
        info = prepare(h)
        console.print(
            f"study [bold]{study.name}[/]: {queue.total(h)} trials ({queue.done(h)} done, {info['queued']} queued, "
            f"{info['dead']} found dead); MLflow {tracking_uri}; Optuna {storage_url}"
        )
        if args.workers == 1:
            run_in_process(h)
        else:
            run_workers(h, args.study, tracking_uri, args.workers)
        if h.trials(states=queue.states(("RUNNING",))):
            console.print("waiting for the trials other workers are running ...")
            wait_for_others(h)
        return _summary(h, console, finish_parent(h))
    except StoreError as e:
        return _store_failed(e)


def _store_failed(e: StoreError) -> int:
    """A failing store: one line, exit 1 (a failing MLflow store: the trial is FAIL in Optuna,
    retried next run; the Optuna journal's errors say what to do themselves), or exit 2 for a
    store that needs a person's decision (a damaged journal, a half-created MLflow store that
    holds runs)."""
    retry = "; run the same command again to retry" if isinstance(e, TrackingStoreError) and e.exit_code == 1 else ""
    print(f"bench: error: {e}{retry}", file=sys.stderr)
    return e.exit_code


def _state_table(title: str, per: dict[str, Counter]):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("variant")
    for s in STATES:
        table.add_column(s.lower(), justify="right")
    for v, c in per.items():
        table.add_row(v, *(str(c.get(s, 0)) for s in STATES))
    return table


def _per_variant(trials) -> dict[str, Counter]:
    per: dict[str, Counter] = {}
    for t in trials:
        per.setdefault(t.user_attrs.get(Attr.VARIANT, "?"), Counter())[t.state.name] += 1
    return per


def _summary(h, console, complete: bool) -> int:
    from .run import queue

    console.print(_state_table(f"study {h.study.name}", _per_variant(h.trials())))
    if not complete:
        missing = queue.total(h) - queue.done(h)
        errors = {t.user_attrs.get(Attr.ERROR, "died") for t in h.trials(states=queue.states(("FAIL",)))}
        console.print(
            f"[red]{missing} trial(s) not done[/] (errors: {'; '.join(sorted(errors))[:300]}); "
            "run the same command again to retry them"
        )
        return EXIT_FAILED_TRIALS
    console.print(f"[green]all {queue.total(h)} trials done[/]; browse them with: bench ui")
    return 0


def dry_run(study: Study, tracking_uri: str) -> int:
    """The study's trials (or search plan), and for a study that already has finished runs, what
    its seeds can detect in each comparison with the baseline."""
    from rich.console import Console
    from rich.table import Table

    from .stores import store_exists
    from .study.plan import plan

    title, columns, rows = plan(study)
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    if store_exists(tracking_uri):
        from .report import power_advice

        baseline = study.confirm.baseline if study.confirm else DEFAULT_BASELINE
        for line in power_advice(tracking_uri, study.name, baseline):
            console.print(f"- {line}", highlight=False, soft_wrap=True)
    return 0


def cmd_worker(args) -> int:
    from .run import queue, run_in_process, start, work

    study = validate_inputs(args)
    storage_url, tracking_uri = store_urls(args, study)
    try:
        h = start(study, args.study, storage_url, tracking_uri, create=False)
    except KeyError:
        return _err(f"study {study.name!r} does not exist in {storage_url}; start it with `bench run` first")
    try:
        queue.check_lost_results(h)
        produced = work(h) if args.quiet else run_in_process(h)
        # trials neither done nor run by another worker: failed (a worker never retries those: a
        # failing job would loop), or dead past queue.DEAD_RETRIES; `bench run` retries them
        not_done = queue.total(h) - queue.done(h) - len(h.trials(states=queue.states(("RUNNING",))))
    except StoreError as e:
        return _store_failed(e)
    if not_done > 0:
        print(
            f"bench: {not_done} trial(s) of study {h.study.name!r} not done; `bench run {args.study}` retries them",
            file=sys.stderr,
        )
        return EXIT_FAILED_TRIALS
    return EXIT_FAILED_TRIALS if produced.get("FAIL") else 0


def cmd_submit(args) -> int:
    from .run.slurm import check_request, executor, preflight, slurm_request

    study = validate_inputs(args)
    check_data_root(args.study, study)
    storage_url, tracking_uri = store_urls(args, study)
    flags = {
        k: getattr(args, k) for k in ("partition", "time", "mem", "cpus_per_worker", "gpus_per_worker", "signal_delay")
    }
    req = slurm_request(study, args.workers, flags, args.slurm or [])
    check_request(storage_url, tracking_uri, args.local_ok)
    ex = executor(req, study.name)
    preflight(ex, req.workers)  # Slurm's own refusal, before anything is written

    from .run import finish_parent, prepare, queue, start
    from .run.slurm import submit

    h = start(study, args.study, storage_url, tracking_uri, create=True)
    info = prepare(h)
    if queue.total(h) <= queue.done(h):
        finish_parent(h)
        print(f"study {study.name}: all {queue.total(h)} trials done; nothing submitted")
        return 0
    array = submit(h, ex, req, tracking_uri)
    web = tracking_uri.startswith(("http://", "https://"))
    print(
        f"submitted Slurm job {array['job_id']}: {req.workers} task(s) of bench worker on study {study.name} "
        f"({queue.total(h)} trials: {queue.done(h)} done, {info['queued']} queued)"
    )
    print(f"logs: {array['log_folder']}/{array['job_id']}_<task>_0_log.out")
    print(f"MLflow: {h.tracker.runs_url(tracking_uri) if web else f'{tracking_uri} (browse: bench ui {args.study})'}")
    return 0


def _arrays_table(arrays):
    from rich.table import Table

    from .run.slurm import array_counts, queue_states

    table = Table(title="Slurm arrays (bench submit)")
    for col in ("study", "job", "tasks", "pending", "running", "ended", "submitted", "logs"):
        table.add_column(col)
    keys = ("job_id", "tasks", "pending", "running", "ended", "submitted", "log_folder")
    for name, row in zip([n for n, _ in arrays], array_counts([a for _, a in arrays], queue_states())):
        table.add_row(name, *(str(row[k]) for k in keys))
    return table


def cmd_ls(args) -> int:
    import optuna
    from rich.console import Console
    from rich.table import Table

    from .stores import open_storage, resolve_storage_url, storage_exists

    url = resolve_storage_url(args.storage, None)
    if not storage_exists(url):
        return _err(f"no study storage at {url} (run `bench run STUDY` here first, or pass --storage)")
    storage = open_storage(url)
    table = Table(title=f"studies in {url}")
    for col in ("study", "variant", *(s.lower() for s in STATES), "best"):
        table.add_column(col)
    arrays = []
    for name in optuna.get_all_study_names(storage):
        ostudy = optuna.load_study(study_name=name, storage=storage)
        trials = ostudy.get_trials(deepcopy=False)
        arrays += [(name, a) for a in ostudy.user_attrs.get(StudyAttr.SLURM_ARRAYS, [])]
        best: dict[str, float] = {}
        for t in trials:
            v = t.user_attrs.get(Attr.VARIANT, "?")
            if t.state.name == "COMPLETE" and t.value is not None:
                best[v] = max(best.get(v, float("-inf")), t.value)
        for v, c in sorted(_per_variant(trials).items()):
            table.add_row(name, v, *(str(c.get(s, 0)) for s in STATES), f"{best[v]:.4f}" if v in best else "")
    Console().print(table)
    if arrays:
        Console().print(_arrays_table(arrays))
    return 0


def cmd_report(args) -> int:
    from .report import ReportError, SearchInfo, search_study
    from .report.build import build
    from .stores import store_exists

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    study = validate_inputs(args)
    name = study.name if study else args.study
    storage_url, uri = store_urls(args, study)
    if not store_exists(uri):
        raise ReportError(
            f"no study {name!r}: no MLflow store at {uri} (run `bench run` here first, or pass --tracking-uri)"
        )
    ostudy = search_study(name, storage_url) if study is None or study.search is not None else None
    expected = len(study.seeds) if study and study.search is None else None
    if study is not None and study.confirm is not None:
        expected = len(study.confirm.seeds)
    baseline = args.baseline or (study.confirm.baseline if study and study.confirm else DEFAULT_BASELINE)
    search = SearchInfo.from_study(study) if study is not None and study.search is not None else None
    out = Path(args.out) if args.out else Path("reports") / name
    for above in (out, *out.parents):  # the first part of --out that exists must be a folder
        if above.exists() or above.is_symlink():
            if not above.is_dir():
                what = "is a file" if above == out else f"is under {above}, a file"
                raise ReportError(f"--out {out}: {what}, not a folder; give a folder for report.md, tables/ and plots/")
            break
    from .stores import TrackingStoreError

    try:
        path = build(name, uri, out, expected_seeds=expected, baseline=baseline, optuna_study=ostudy, search=search)
    except TrackingStoreError as e:  # a damaged store: a fault, not bad input
        print(f"bench: error: {e}", file=sys.stderr)
        return EXIT_FAILED_TRIALS
    print(f"report written: {path} and {path.with_suffix('.html')} (tables/, plots/ beside them)")
    return 0


def _check_port(host: str, port: int) -> None:
    """Refuse a port this host cannot listen on (in use, not allowed) before the server starts."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server: a closed port in TIME_WAIT is free
            s.bind((host, port))
    except OSError as e:
        if getattr(e, "errno", None) == errno.EADDRINUSE:
            raise StudyError(f"port {port} on {host} is in use; pass --port") from None
        raise StudyError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def cmd_ui(args) -> int:
    """The MLflow server as a child in its own process group; SIGINT/SIGTERM stop the whole
    group (server, job runner, workers). Otherwise the server's exit status."""
    import subprocess

    from tkp_pcl.process import signals_held

    from .signals import stop_processes
    from .stores import Tracker

    study = validate_inputs(args)
    _, uri = store_urls(args, study)
    _check_port(args.host, args.port)
    base = f"http://{args.host}:{args.port}"
    url = Tracker(uri, study.name).runs_url(base) if study else base
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    print(f"MLflow UI for {uri}: {url}", file=sys.stderr, flush=True)
    with signals_held():
        server = subprocess.Popen(cmd, start_new_session=True)
    try:
        return server.wait()
    except BaseException:
        stop_processes([server], group=True, timeout=30)
        raise


def cmd_data(args) -> int:
    from tkp_pcl.data.coco_convert import write_coco_masks
    from tkp_pcl.data.errors import DataWriteError

    try:
        s = write_coco_masks(
            args.instances,
            args.out,
            min_side=args.min_side,
            warn=lambda m: print(f"bench: warning: {m}", file=sys.stderr),
        )
    except DataWriteError as e:  # a full disk: a fault (exit 1), the same command works once it is fixed
        print(f"bench: error: {e}; run the same command again once it is fixed", file=sys.stderr)
        return EXIT_FAILED_TRIALS
    replaced = f" (replacing the {s.replaced} masks it held)" if s.replaced else ""
    print(
        f"{s.written} masks written to {args.out}{replaced}; left out: {s.too_small} smaller than "
        f"{args.min_side} px on a side, {s.empty} without object pixels; skipped: {s.short_polygons} "
        "polygons of fewer than 3 points (they cover no pixel)"
    )
    return 0


def _quiet_libraries(args) -> None:
    """Logging levels and torch threads: after validation, as it imports Optuna (and torch)."""
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


COMMANDS = {
    "run": cmd_run,
    "worker": cmd_worker,
    "submit": cmd_submit,
    "ls": cmd_ls,
    "ui": cmd_ui,
    "report": cmd_report,
    "data": cmd_data,
}


# commands that train or serve: SIGTERM stops them as Ctrl-C does (bench.signals)
LONG_RUNNING = ("run", "worker", "ui")


def interrupted_line(e: BaseException, command: str) -> str:
    """The one line a command stopped by SIGINT / SIGTERM / the pre-timeout signal ends with."""
    import signal

    name = signal.Signals(signum_of(e)).name
    if command == "ui":
        return f"bench: interrupted ({name}); the MLflow UI is stopped"
    if signum_of(e) == PREEMPT:
        return f"bench: stopped ({name}, pre-timeout); a trial under way was checkpointed and queued again"
    return f"bench: interrupted ({name}); run the same command again to resume"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    with stop_on_signals() if args.command in LONG_RUNNING else nullcontext():
        try:
            validate_inputs(args)  # before any heavy import: a bad study file fails in a fraction of a second
            _quiet_libraries(args)
            return COMMANDS[args.command](args)
        except input_error_types() as e:
            msg = str(e)
            if type(e).__name__ == "DataError" and _study_file(args):
                msg = f"{_study_file(args)}: data: {msg}"  # found while loading the data set
            return _err(msg)
        except StoreError as e:  # `bench ls` / `report` on a damaged journal, a store failing at startup
            return _store_failed(e)
        except KeyboardInterrupt as e:
            print(interrupted_line(e, args.command), file=sys.stderr)
            return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
