"""The command line of a worker process: what ``bench run --workers N`` starts N times on this
machine and what each task of a ``bench submit`` array runs. Light at import (``bench ls``
imports :mod:`bench.run.slurm`, which builds it)."""

from __future__ import annotations

import sys
from pathlib import Path


def worker_command(study_path: str, storage_url: str, tracking_uri: str, threads: int, ranks: int = 1) -> list[str]:
    """One ``bench worker`` on the study (the one worker loop, quiet: its log is a file); with
    ``ranks`` > 1, one rank of the data-parallel worker :mod:`bench.run.ddp` (each of a Slurm
    job's tasks runs one)."""
    entry = ["bench.cli", "worker"] if ranks == 1 else ["bench.run.ddp", "--worker"]
    return [
        sys.executable,
        "-m",
        *entry,
        str(Path(study_path).resolve()),
        "--storage",
        storage_url,
        "--tracking-uri",
        tracking_uri,
        "--threads",
        str(threads),
        *(["--quiet"] if ranks == 1 else []),
    ]
