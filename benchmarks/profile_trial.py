"""Where the time of one quickstart trial goes: ``bench run`` of the quickstart's TKP-PCL job
(seed 0) alone, as a user runs it, sampled by py-spy (``dev`` extra; 50 Hz, the main thread,
waiting included), split into the stages and their parts.

    python benchmarks/profile_trial.py [--variant tkp-pcl] [--set train.amp=true ...]

Prints one row a part (seconds of the main thread, share of the process's wall time) and writes
``benchmarks/results/profile_trial.csv`` beside the float32 matmul GFLOP/s measured in the same
run. Parts nest (indented): a part's seconds include its children's. The CRF runs in a pool of
processes: in the main thread it is the wait for their results; their own busy time is a row.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml
from common import ROOT, emit, matmul_gflops

RATE = 50  # samples a second

# (label, depth, [(path part, function name or *)]): a part is the samples whose stack holds one of them
PARTS = [
    ("imports (all, lazy ones too)", 0, [("<frozen importlib._bootstrap>", "_find_and_load")]),
    ("startup: data, stores, checks", 0, [("bench/run/startup.py", "start")]),
    ("trial", 0, [("bench/run/trial.py", "run_trial")]),
    ("stage 1", 1, [("tkp_pcl/stage1/train.py", "train_stage1")]),
    ("batches (load, resize)", 2, [("torch/utils/data/dataloader.py", "__next__")]),
    ("forward + loss", 2, [("tkp_pcl/stage1/objective.py", "stage1_loss")]),
    ("views: mosaics, crops, flips", 3, [("tkp_pcl/stage1/objective.py", "vitpcm_views")]),
    ("equivariance targets + loss", 3, [("tkp_pcl/stage1/equivariance.py", "mosaic_equivariance_loss")]),
    ("patch contrastive error", 3, [("tkp_pcl/stage1/losses.py", "patch_contrastive_error")]),
    ("backward + optimizer step", 2, [("tkp_pcl/runtime.py", "optimizer_step")]),
    ("monitor (pseudo mIoU, no CRF)", 2, [("tkp_pcl/stage1/train.py", "monitor_miou")]),
    ("epoch log (MLflow, Optuna)", 2, [("bench/run/pipeline.py", "on_epoch_end")]),
    ("pseudo labels (+ monitor's)", 1, [("tkp_pcl/pseudo/labels.py", "make_pseudo_labels")]),
    ("model inference", 2, [("tkp_pcl/pseudo/labels.py", "predict_class_maps")]),
    ("upsample, argmax, confusion", 2, [("tkp_pcl/pseudo/labels.py", "label_batch")]),
    ("waiting for the CRF pool", 2, [("tkp_pcl/pseudo/labels.py", "_finish")]),
    ("label PNGs written", 2, [("tkp_pcl/data/palette.py", "save_label_png")]),
    ("stage 2", 1, [("tkp_pcl/stage2/train.py", "train_segmentation")]),
    ("evaluation on val", 2, [("tkp_pcl/stage2/evaluate.py", "evaluate_segmentation")]),
    ("MLflow calls", 1, [("mlflow/", "*")]),
    ("artifacts (overlays, tables)", 1, [("bench/run/pipeline.py", "write_artifacts")]),
]


def one_trial_study(tmp: Path, variant: str, overrides: list[str]) -> Path:
    """The quickstart study with one variant and one seed (its job as it runs there), with
    ``overrides`` (``train.amp=true``) set in ``base``."""
    study = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    study["name"] = "profile"
    study["variants"] = {variant: study["variants"][variant]}
    study["seeds"] = [0]
    for item in overrides:
        key, value = item.split("=", 1)
        *path, last = key.split(".")
        node = study["base"]
        for k in path:
            node = node.setdefault(k, {})
        node[last] = yaml.safe_load(value)
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def sampled_run(study: Path, cwd: Path) -> tuple[Counter, Counter, float]:
    """``bench run`` of ``study`` under py-spy: the sample counts of the main thread's stacks and
    of the child processes' stacks (idle ones too), and the wall seconds."""
    out = cwd / "stacks.txt"
    spy = [
        "py-spy",
        "record",
        "--format",
        "raw",
        "--rate",
        str(RATE),
        "--subprocesses",
        "--idle",
        "--threads",
        "--nonblocking",
    ]
    cmd = [*spy, "-o", str(out), "--", sys.executable, "-m", "bench.cli", "run", str(study)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if r.returncode != 0 or not out.exists():
        sys.exit(f"py-spy / bench run failed ({r.returncode}):\n{r.stderr[-2000:]}")
    main, others = Counter(), Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        where = stack.split(";")[1]  # this process's thread, or a child process (the CRF pool's)
        if where.startswith("thread") and where.endswith("MainThread"):
            main[stack] += int(n)
        elif where.startswith("process"):
            others[stack] += int(n)
    return main, others, wall


def seconds_in(stacks: Counter, funcs: list[tuple[str, str]]) -> float:
    """Seconds of the samples whose stack holds one of ``funcs`` (path part, function or ``*``)."""

    def holds(stack: str) -> bool:
        for frame in stack.split(";"):
            func, _, where = frame.partition(" (")
            if any(part in where and (name in ("*", func)) for part, name in funcs):
                return True
        return False

    return sum(n for stack, n in stacks.items() if holds(stack)) / RATE


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="tkp-pcl")
    ap.add_argument("--set", action="append", default=[], help="a base setting, e.g. train.amp=true")
    args = ap.parse_args()
    gflops = matmul_gflops()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        main_stacks, others, wall = sampled_run(one_trial_study(tmp, args.variant, args.set), tmp)
    rows = []
    for label, depth, funcs in PARTS:
        s = seconds_in(main_stacks, funcs)
        rows.append({"part": "  " * depth + label, "seconds": round(s, 2), "share": f"{s / wall:.0%}"})
    crf = seconds_in(others, [("tkp_pcl/pseudo/crf.py", "*")])  # busy: in the CRF, not waiting for a job
    rows.append({"part": "CRF processes busy (all workers)", "seconds": round(crf, 2), "share": f"{crf / wall:.0%}"})
    rows.append({"part": "process wall time", "seconds": round(wall, 2), "share": "100%"})
    for r in rows:
        r["settings"] = " ".join(args.set) or "as committed"
        r["matmul_f32_gflops"] = round(gflops, 1)
    emit("profile_trial", rows)


if __name__ == "__main__":
    main()
