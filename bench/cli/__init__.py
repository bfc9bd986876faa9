"""The ``bench`` command (``python -m bench.cli`` too): :mod:`.main` dispatches, :mod:`.args`
parses and checks the inputs, :mod:`.running` / :mod:`.reading` / :mod:`.data` are the
commands, :mod:`.exits` the exit codes and one-line endings."""

from .args import store_urls, validate_inputs
from .exits import EXIT_BAD_INPUT, EXIT_FAILED_TRIALS, interrupted_line
from .main import main

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED_TRIALS", "interrupted_line", "main", "store_urls", "validate_inputs"]
