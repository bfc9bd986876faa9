"""Wall time of a study of 8 short trials with `bench run --workers 1` vs `--workers 2`, each in
a fresh directory (own MLflow store and Optuna journal).

    python benchmarks/worker_scaling.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, emit


def study_file(d: Path, epochs: int) -> Path:
    s = yaml.safe_load((ROOT / "studies" / "smoke.yaml").read_text())
    s["name"] = "worker_scaling"
    s["seeds"] = [0, 1, 2, 3]  # 2 variants x 4 seeds = 8 trials
    s["base"]["train"]["epochs"] = epochs
    s["base"]["train"].pop("num_threads", None)
    s["data"]["n_train"] = 192
    path = d / "study.yaml"
    path.write_text(yaml.safe_dump(s))
    return path


def timed_run(workers: int, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        path = study_file(d, epochs)
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "bench.cli", "run", str(path), "--workers", str(workers)],
            cwd=d,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"bench run --workers {workers} failed:\n{r.stderr[-2000:]}")
        return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    w1 = timed_run(1, args.epochs)
    w2 = timed_run(2, args.epochs)
    row = {
        "trials": 8,
        "epochs": args.epochs,
        "seconds_workers_1": f"{w1:.1f}",
        "seconds_workers_2": f"{w2:.1f}",
        "speedup": f"{w1 / w2:.2f}",
    }
    emit("worker_scaling", [row])


if __name__ == "__main__":
    main()
