"""The commands that run a study's trials: ``bench run`` (here, in one process or N), ``bench
worker`` (join a study from any machine), ``bench submit`` (a Slurm job array of workers)."""

from __future__ import annotations

import sys

from ..records import Attr
from ..stores.errors import StoreError
from ..study import Study, check_data_root
from .args import store_urls, validate_inputs
from .exits import EXIT_FAILED_TRIALS, bad_input, store_failed
from .reading import DEFAULT_BASELINE, per_variant, state_table


def cmd_run(args) -> int:
    from rich.console import Console

    from ..run import finish_parent, prepare, queue, run_in_process, run_workers, start, wait_for_others

    study = validate_inputs(args)
    storage_url, tracking_uri = store_urls(args, study)
    if args.workers < 1:
        return bad_input("--workers must be >= 1")
    if args.dry_run:
        return dry_run(study, tracking_uri)
    if args.rehearse:
        from ..run.rehearse import rehearse_from_args

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
        return store_failed(e)


def _summary(h, console, complete: bool) -> int:
    from ..run import queue

    console.print(state_table(f"study {h.study.name}", per_variant(h.trials())))
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

    from ..stores import store_exists
    from ..study.plan import plan

    title, columns, rows = plan(study)
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    if store_exists(tracking_uri):
        from ..report import power_advice

        baseline = study.confirm.baseline if study.confirm else DEFAULT_BASELINE
        for line in power_advice(tracking_uri, study.name, baseline):
            console.print(f"- {line}", highlight=False, soft_wrap=True)
    return 0


def cmd_worker(args) -> int:
    from ..run import queue, run_in_process, start, work

    study = validate_inputs(args)
    storage_url, tracking_uri = store_urls(args, study)
    try:
        h = start(study, args.study, storage_url, tracking_uri, create=False)
    except KeyError:
        return bad_input(f"study {study.name!r} does not exist in {storage_url}; start it with `bench run` first")
    try:
        queue.check_lost_results(h)
        produced = work(h) if args.quiet else run_in_process(h)
        # trials neither done nor run by another worker: failed (a worker never retries those: a
        # failing job would loop), or dead past queue.DEAD_RETRIES; `bench run` retries them
        not_done = queue.total(h) - queue.done(h) - len(h.trials(states=queue.states(("RUNNING",))))
    except StoreError as e:
        return store_failed(e)
    if not_done > 0:
        print(
            f"bench: {not_done} trial(s) of study {h.study.name!r} not done; `bench run {args.study}` retries them",
            file=sys.stderr,
        )
        return EXIT_FAILED_TRIALS
    return EXIT_FAILED_TRIALS if produced.get("FAIL") else 0


def cmd_submit(args) -> int:
    from ..run.slurm import check_request, executor, preflight, slurm_request

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

    from ..run import finish_parent, prepare, queue, start
    from ..run.slurm import submit

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
