"""``bench``: run, join, list, report and browse studies. Parses arguments and prints; the work
is done by :mod:`bench.run`, :mod:`bench.stores` and :mod:`bench.report`.

Exit codes: 0 done; 1 some trials failed (run again to retry them); 2 bad input (study file,
data, storage), with a one-line message on stderr; 130 / 143 stopped by SIGINT (Ctrl-C) /
SIGTERM, with one line (the trial is resumed by the same command; :mod:`bench.signals`).
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext

from ..signals import exit_code, stop_on_signals
from ..stores.errors import StoreError  # light: no Optuna, no MLflow
from ..study import input_error_types
from .args import parser, study_file, validate_inputs
from .data import cmd_data
from .exits import bad_input, interrupted_line, store_failed
from .reading import cmd_ls, cmd_report, cmd_ui
from .running import cmd_run, cmd_submit, cmd_worker


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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    with stop_on_signals() if args.command in LONG_RUNNING else nullcontext():
        try:
            validate_inputs(args)  # before any heavy import: a bad study file fails in a fraction of a second
            _quiet_libraries(args)
            return COMMANDS[args.command](args)
        except input_error_types() as e:
            msg = str(e)
            if type(e).__name__ == "DataError" and study_file(args):
                msg = f"{study_file(args)}: data: {msg}"  # found while loading the data set
            return bad_input(msg)
        except StoreError as e:  # `bench ls` / `report` on a damaged journal, a store failing at startup
            return store_failed(e)
        except KeyboardInterrupt as e:
            print(interrupted_line(e, args.command), file=sys.stderr)
            return exit_code(e)
