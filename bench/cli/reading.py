"""The commands that read a study: ``bench ls`` (studies and Slurm arrays in a storage),
``bench report`` (tables and plots), ``bench ui`` (the MLflow UI on its store)."""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections import Counter
from pathlib import Path

from ..records import Attr, StudyAttr
from ..study import StudyError
from .args import store_urls, validate_inputs
from .exits import EXIT_FAILED_TRIALS, bad_input

DEFAULT_BASELINE = "vit-pcm"
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def state_table(title: str, per: dict[str, Counter]):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("variant")
    for s in STATES:
        table.add_column(s.lower(), justify="right")
    for v, c in per.items():
        table.add_row(v, *(str(c.get(s, 0)) for s in STATES))
    return table


def per_variant(trials) -> dict[str, Counter]:
    per: dict[str, Counter] = {}
    for t in trials:
        per.setdefault(t.user_attrs.get(Attr.VARIANT, "?"), Counter())[t.state.name] += 1
    return per


def _arrays_table(arrays):
    from rich.table import Table

    from ..run.slurm import array_counts, queue_states

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

    from ..stores import open_storage, resolve_storage_url, storage_exists

    url = resolve_storage_url(args.storage, None)
    if not storage_exists(url):
        return bad_input(f"no study storage at {url} (run `bench run STUDY` here first, or pass --storage)")
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
        for v, c in sorted(per_variant(trials).items()):
            table.add_row(name, v, *(str(c.get(s, 0)) for s in STATES), f"{best[v]:.4f}" if v in best else "")
    Console().print(table)
    if arrays:
        Console().print(_arrays_table(arrays))
    return 0


def cmd_report(args) -> int:
    from ..report import ReportError, SearchInfo, search_study
    from ..report.build import build
    from ..stores import store_exists

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
    from ..stores import TrackingStoreError

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

    from ..signals import stop_processes
    from ..stores import Tracker

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
