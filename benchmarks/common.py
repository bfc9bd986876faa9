"""Shared by the benchmark scripts: the quickstart's model configuration, machine facts, CSV."""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def quickstart_job(variant: str = "tkp-pcl"):
    """The quickstart study and the configuration of one of its jobs (seed 0)."""
    from bench.study import load_study, study_jobs

    study = load_study(ROOT / "studies" / "quickstart.yaml")
    job = next(j for j in study_jobs(study) if j.variant == variant and j.seed == 0)
    return study, job.config


def matmul_gflops(
    n: int = 2048, k: int | None = None, m: int | None = None, dtype=torch.float32, seconds: float = 2.0
) -> float:
    """Sustained GFLOP/s of an (n, k) @ (k, m) matmul (square 2048 by default) at ``dtype``: the
    machine's speed of the day, printed beside every wall time."""
    k, m = k or n, m or n
    a, b = torch.randn(n, k, dtype=dtype), torch.randn(k, m, dtype=dtype)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n * k * m * reps / (time.perf_counter() - t0) / 1e9


def machine() -> dict[str, str]:
    return {
        "date": dt.date.today().isoformat(),
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }


def emit(name: str, rows: list[dict]) -> Path:
    """Print the figures (one per line for a single row) and write them as CSV."""
    if len(rows) == 1:
        for k, v in rows[0].items():
            print(f"{k:32s} {v}")
    else:
        import pandas as pd

        print(pd.DataFrame(rows).to_string(index=False))
    return write_csv(name, rows)


def write_csv(name: str, rows: list[dict]) -> Path:
    """Write ``benchmarks/results/<name>.csv`` (machine facts added to each row)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.csv"
    rows = [{**r, **machine()} for r in rows]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")
    return path
