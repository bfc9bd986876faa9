"""``bench``: run, join, list and browse studies.

Exit codes: 0 done; 1 some trials failed (run again to retry them); 2 bad input (study file,
data, storage), with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections import Counter
from pathlib import Path

from .study import Study, StudyError, load_study  # pydantic + PyYAML only: a bad file fails fast
from .urls import check_mlflow_uri, check_optuna_storage

EXIT_FAILED_TRIALS = 1
EXIT_BAD_INPUT = 2
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

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("study", help="study file (studies/*.yaml)")
        sp.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, the study's, or sqlite:///mlflow.db)")
        sp.add_argument("--storage", help="Optuna storage: journal:PATH, sqlite:///PATH, postgresql://... (default: journal:.bench/optuna.journal)")
        sp.add_argument("--threads", type=int, help="torch CPU threads for this process")

    run = sub.add_parser("run", help="run (or resume) a study")
    common(run)
    run.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    run.add_argument("--dry-run", action="store_true", help="print the trials and exit; writes nothing")
    worker = sub.add_parser("worker", help="join a study another `bench run` started (any machine)")
    common(worker)
    worker.add_argument("--quiet", action="store_true", help="no progress display")
    ls = sub.add_parser("ls", help="studies in a storage and their progress per variant")
    ls.add_argument("--storage", help="Optuna storage (default: journal:.bench/optuna.journal)")
    rep = sub.add_parser("report", help="tables, plots and overlays of a study (Markdown, HTML, CSV, LaTeX)")
    rep.add_argument("study", help="study file, or a study name")
    rep.add_argument("--tracking-uri", help="MLflow tracking URI (as for run)")
    rep.add_argument("--storage", help="Optuna storage, for search studies (as for run)")
    rep.add_argument("--out", help="output folder (default: reports/<study>)")
    rep.add_argument("--baseline", default="vit-pcm", help="variant the others are compared with (default vit-pcm)")
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


def _study_file(args) -> str | None:
    """The study file a command names (``bench report`` also takes a bare study name)."""
    arg = getattr(args, "study", None)
    if arg and args.command == "report" and not (arg.endswith((".yaml", ".yml")) or Path(arg).is_file()):
        return None
    return arg


def _check_data_root(path: str, study: Study) -> None:
    """A data set under a ``root`` folder that does not exist: an error naming ``data.root``."""
    root = getattr(study.data, "root", None)
    if root is None or Path(root).expanduser().is_dir():
        return
    import importlib

    try:  # the loader's download hint (imports the data modules: only on this error path)
        hint = "; " + importlib.import_module(f"tkp_pcl.data.{study.data.kind}").DOWNLOAD_HINT
    except (ImportError, AttributeError):
        hint = ""
    raise StudyError(f"{path}: data.root: {study.data.kind.upper()} root {root} does not exist{hint}")


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
                raise StudyError(f"{source}: {e} (got {value!r})") from None


def _validate(args) -> Study | None:
    """Read and check the command's inputs (study file, URLs, data root) with light imports
    only, once per process; raises :class:`StudyError`. Returns the study, if a file was named."""
    if "_study" in vars(args):
        return args._study
    _check_urls(args)
    path = _study_file(args)
    study = load_study(path) if path else None
    if study is not None and args.command in ("run", "worker"):
        _check_data_root(path, study)
    args._study = study
    return study


def _load(args):
    """The study, its Optuna storage URL and its MLflow tracking URI (after the precedence rules)."""
    study = _validate(args)
    from .storage import resolve_storage_url
    from .tracking import resolve_tracking_uri

    return (study, resolve_storage_url(args.storage, study.tracking.optuna_storage),
            resolve_tracking_uri(args.tracking_uri, study.tracking.mlflow_uri))  # fmt: skip


def cmd_run(args) -> int:
    from rich.console import Console

    from . import runner
    from .tracking import TrackingStoreError

    study, storage_url, tracking_uri = _load(args)
    if args.workers < 1:
        return _err("--workers must be >= 1")
    console = Console(stderr=True)
    if args.dry_run:
        return dry_run(study, storage_url)
    data = _check_data(study, args.study)  # before anything is written
    _check_weights(study)  # so is a model.pretrained_file that is missing or does not fit
    h = runner.open_study(study, storage_url, tracking_uri, create=True, data=data)
    runner.check(h, args.study)  # a file that disagrees with the stored trials: refused, nothing written
    try:
        parent = h.tracker.open()
        if data[1] is not None:
            _log_split_ids(h.tracker, parent, data[1])
        info = runner.prepare(h, args.study)
        console.print(
            f"study [bold]{study.name}[/]: {h.total} trials ({len(h.trials(states=runner.DONE_STATES))} done, "
            f"{info['queued']} queued, {info['dead']} found dead); MLflow {tracking_uri}; Optuna {storage_url}"
        )
        if args.workers == 1:
            runner.run_in_process(h)
        else:
            runner.run_workers(h, args.study, tracking_uri, args.workers)
        if h.trials(states=(runner.TrialState.RUNNING,)):
            console.print("waiting for the trials other workers are running ...")
            runner.wait_for_others(h)
        return _summary(h, console)
    except TrackingStoreError as e:
        return _store_failed(e)


def _check_data(study, path: str):
    """Load the study's data and build its tune / report splits (None without ``search.tune``);
    returns both, for the process's trials to reuse. A missing data set, or tune images among
    the reported ones, is a :class:`StudyError` naming ``path``, raised before anything is
    written or claimed."""
    from tkp_pcl.data import load_splits

    from .search_protocol import protocol_splits
    from .study import StudyError

    try:
        splits = load_splits(study.data)
        return splits, protocol_splits(study, splits)
    except StudyError as e:
        raise StudyError(f"{path}: {e}") from None


def _log_split_ids(tracker, parent_run_id: str, protocol) -> None:
    """``tune_ids.txt`` and ``report_ids.txt`` as artifacts of the study's parent run."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        for path in protocol.write_ids(Path(tmp)):
            tracker.log_artifact(parent_run_id, path)


def _store_failed(e) -> int:
    """A failing MLflow store: one line, exit 1 (the trial is FAIL in Optuna, retried next run)."""
    print(f"bench: error: {e}; run the same command again to retry", file=sys.stderr)
    return EXIT_FAILED_TRIALS


def _check_weights(study) -> None:
    """Build each distinct backbone that has a ``model.pretrained_file`` once and load the file;
    raises :class:`tkp_pcl.weights.WeightsError` (one line: the path and the first bad key)."""
    from tkp_pcl.model import check_pretrained_file

    from .study import search_variant, study_jobs, variant_config

    configs = [j.config for j in study_jobs(study)] or [variant_config(study, search_variant(study))]
    for model_cfg in {c.model.model_dump_json(): c.model for c in configs}.values():
        check_pretrained_file(model_cfg)


def _summary(h, console) -> int:
    from rich.table import Table

    from . import runner

    complete = runner.finish_parent(h)
    table = Table(title=f"study {h.study.name}")
    per: dict[str, Counter] = {}
    for t in h.trials():
        per.setdefault(t.user_attrs.get("variant", "?"), Counter())[t.state.name] += 1
    states = ["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]
    table.add_column("variant")
    for s in states:
        table.add_column(s.lower(), justify="right")
    for v, c in per.items():
        table.add_row(v, *(str(c.get(s, 0)) for s in states))
    console.print(table)
    failed = [t for t in h.trials(states=(runner.TrialState.FAIL,))]
    if not complete:
        missing = h.total - len(h.trials(states=runner.DONE_STATES))
        errors = {t.user_attrs.get("error", "died") for t in failed}
        console.print(f"[red]{missing} trial(s) not done[/] (errors: {'; '.join(sorted(errors))[:300]}); "
                      "run the same command again to retry them")  # fmt: skip
        return EXIT_FAILED_TRIALS
    console.print(f"[green]all {h.total} trials done[/]; browse them with: bench ui")
    return 0


def dry_run(study, storage_url: str) -> int:
    from rich.console import Console
    from rich.table import Table

    from .search_protocol import confirm_total, plan_rows
    from .study import study_jobs

    jobs = study_jobs(study)
    n = len(jobs) or study.search.n_trials
    then = f" + {confirm_total(study)} confirmation runs" if study.confirm else ""
    table = Table(title=f"{study.name}: {n} trials{then} (dry run)")
    if jobs:
        for col in ("#", "job", "variant", "seed", "pooling", "pce_weight", "epochs"):
            table.add_column(col)
        for i, j in enumerate(jobs):
            c = j.config
            pool = c.pooling.kind + (f" k_ratio={c.pooling.k_ratio}" if c.pooling.kind == "topk" else "")
            table.add_row(str(i), j.key, j.variant, str(j.seed), pool, str(c.loss.pce_weight), str(c.train.epochs))
    else:
        s = study.search
        table.add_column("search")
        table.add_column("value")
        for k, v in [("variant", s.variant or next(iter(study.variants))), ("sampler", s.sampler),
                     ("pruner", s.pruner), ("objective", f"{s.direction} {s.metric}"), ("n_trials", s.n_trials),
                     *((f"space.{p}", spec.model_dump()) for p, spec in s.space.items()), *plan_rows(study)]:  # fmt: skip
            table.add_row(k, str(v))
    Console().print(table)
    return 0


def cmd_worker(args) -> int:
    from . import runner
    from .tracking import TrackingStoreError

    study, storage_url, tracking_uri = _load(args)
    data = _check_data(study, args.study)  # this machine's copy of the data: checked before a trial is claimed
    _check_weights(study)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        h = runner.open_study(study, storage_url, tracking_uri, create=False, data=data)
    except KeyError:
        return _err(f"study {study.name!r} does not exist in {storage_url}; start it with `bench run` first")
    runner.check(h, args.study)  # before claiming anything
    try:
        done = runner.work(h) if args.quiet else runner.run_in_process(h)
    except TrackingStoreError as e:
        return _store_failed(e)
    return EXIT_FAILED_TRIALS if done.get("FAIL") else 0


def cmd_ls(args) -> int:
    import optuna
    from rich.console import Console
    from rich.table import Table

    from .storage import open_storage, resolve_storage_url, storage_exists

    url = resolve_storage_url(args.storage, None)
    if not storage_exists(url):
        return _err(f"no study storage at {url} (run `bench run STUDY` here first, or pass --storage)")
    storage = open_storage(url)
    table = Table(title=f"studies in {url}")
    for col in ("study", "variant", "complete", "pruned", "fail", "running", "waiting", "best"):
        table.add_column(col)
    for name in optuna.get_all_study_names(storage):
        st = optuna.load_study(study_name=name, storage=storage)
        per: dict[str, Counter] = {}
        best: dict[str, float] = {}
        for t in st.get_trials(deepcopy=False):
            v = t.user_attrs.get("variant", "?")
            per.setdefault(v, Counter())[t.state.name] += 1
            if t.state.name == "COMPLETE" and t.value is not None:
                best[v] = max(best.get(v, float("-inf")), t.value)
        for v, c in sorted(per.items()):
            table.add_row(name, v, *(str(c.get(s, 0)) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")),
                          f"{best[v]:.4f}" if v in best else "")  # fmt: skip
    Console().print(table)
    return 0


def cmd_report(args) -> int:
    from . import report
    from .report_data import ReportError
    from .report_search import SearchInfo
    from .storage import open_storage, resolve_storage_url, storage_exists
    from .tracking import resolve_tracking_uri, store_exists

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    study = _validate(args)
    name = study.name if study else args.study
    uri = resolve_tracking_uri(args.tracking_uri, study.tracking.mlflow_uri if study else None)
    if not store_exists(uri):
        raise ReportError(f"no study {name!r}: no MLflow store at {uri} (run `bench run` here first, or pass --tracking-uri)")
    ostudy = None
    if study is None or study.search is not None:
        url = resolve_storage_url(args.storage, study.tracking.optuna_storage if study else None)
        if storage_exists(url):
            import optuna

            try:
                ostudy = optuna.load_study(study_name=name, storage=open_storage(url))
            except KeyError:
                ostudy = None
            if ostudy is not None and not any("search|" in t.user_attrs.get("job_key", "") for t in ostudy.trials):
                ostudy = None  # a grid study: no search plots
    expected = len(study.seeds) if study and study.search is None else None
    if study is not None and study.confirm is not None:
        expected = len(study.confirm.seeds)
    search = SearchInfo.from_study(study) if study is not None and study.search is not None else None
    out = Path(args.out) if args.out else Path("reports") / name
    path = report.build(name, uri, out, expected_seeds=expected, baseline=args.baseline, optuna_study=ostudy, search=search)
    print(f"report written: {path} and {path.with_suffix('.html')} (tables/, plots/ beside them)")
    return 0


def cmd_ui(args) -> int:
    from .tracking import Tracker, resolve_tracking_uri

    study = _validate(args)  # read once, by main()
    uri = resolve_tracking_uri(args.tracking_uri, study.tracking.mlflow_uri if study else None)
    base = f"http://{args.host}:{args.port}"
    url = Tracker(uri, study.name).runs_url(base) if study else base
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    print(f"MLflow UI for {uri}: {url}", file=sys.stderr, flush=True)
    os.execv(sys.executable, cmd)
    return 0


def cmd_data(args) -> int:
    from tkp_pcl.data.coco_convert import write_coco_masks

    s = write_coco_masks(args.instances, args.out, min_side=args.min_side)
    print(f"{s.written} masks written to {args.out}; left out: {s.too_small} smaller than {args.min_side} px "
          f"on a side, {s.empty} without object pixels")  # fmt: skip
    return 0


def _input_error_types() -> tuple[type[Exception], ...]:
    """The exceptions that mean bad input: :class:`StudyError`, and ``DataError`` /
    ``ReportError`` once their (heavy) modules are imported: one never imported was not raised."""
    found: list[type[Exception]] = [StudyError]
    for module, name in (("tkp_pcl.data", "DataError"), ("bench.report_data", "ReportError"), ("tkp_pcl.model.weights", "WeightsError")):
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None:
            found.append(cls)
    return tuple(found)


def _quiet_libraries(args) -> None:
    """Logging levels and torch threads: after validation, as it imports Optuna (and torch)."""
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    commands = {"run": cmd_run, "worker": cmd_worker, "ls": cmd_ls, "ui": cmd_ui, "report": cmd_report, "data": cmd_data}
    try:
        _validate(args)  # before any heavy import: a bad study file fails in a fraction of a second
        _quiet_libraries(args)
        return commands[args.command](args)
    except _input_error_types() as e:
        msg = str(e)
        if type(e).__name__ == "DataError" and _study_file(args):
            msg = f"{_study_file(args)}: data: {msg}"  # found while loading the data set
        return _err(msg)
    except KeyboardInterrupt:
        print("bench: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
