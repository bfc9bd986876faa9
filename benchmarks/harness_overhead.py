"""Stage-1 training throughput through `bench run` (MLflow logging, Optuna reporting, per-epoch
held-out pseudo mIoU and checkpoint) against a bare PyTorch loop over the same model, data,
losses, epochs and seed, in the same process.

    python benchmarks/harness_overhead.py [--epochs 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import mlflow
import torch
import yaml
from torch.utils.data import DataLoader

from common import ROOT, quickstart_job, write_csv
from tkp_pcl.data import load_splits
from tkp_pcl.losses import equivariance_loss, image_loss, patch_contrastive_error, patch_labels_from_probs
from tkp_pcl.model import PatchClassifier
from tkp_pcl.pooling import pool
from tkp_pcl.train import ImageLabelDataset


def bare_loop(cfg, splits, epochs: int) -> float:
    """The training steps and nothing else; returns images/s."""
    torch.manual_seed(cfg.train.seed)
    model = PatchClassifier(cfg.model, splits.train.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    loader = DataLoader(ImageLabelDataset(splits.train, cfg.model.img_size), batch_size=cfg.train.batch_size,
                        shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0))  # fmt: skip
    lc, n = cfg.loss, 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        for images, labels in loader:
            b = images.shape[0]
            out = model(torch.cat([images, images.flip(-1)]))
            both = labels.repeat(2, 1)
            loss = image_loss(pool(out.probs, cfg.pooling.kind, k_ratio=cfg.pooling.k_ratio), both)
            loss = loss + lc.eq_weight * equivariance_loss(out.probs[:b], out.probs[b:], labels, out.grid)
            if epoch >= lc.pce_warmup_epochs:
                pl = patch_labels_from_probs(out.probs, both)
                loss = loss + lc.pce_weight * patch_contrastive_error(out.embeddings, pl, lc.pce_temperature, lc.pce_max_patches)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            n += b
    return n / (time.perf_counter() - t0)


def through_bench(epochs: int) -> tuple[float, float]:
    """One tkp-pcl trial of the quickstart via `bench run`; returns (stage-1 images/s, trial s)."""
    from bench.cli import main as bench_main

    s = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    s.update(name="overhead", seeds=[0], variants={"tkp-pcl": {}})
    s["base"]["train"]["epochs"] = epochs
    s["base"]["segment"] = {"enabled": False}  # stage 1 only, as the bare loop
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            Path("s.yaml").write_text(yaml.safe_dump(s))
            if bench_main(["run", "s.yaml"]) != 0:
                raise SystemExit("bench run failed; see its output above")
            mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
            runs = mlflow.search_runs(experiment_names=["overhead"], filter_string="tags.`bench.role` = 'trial'")
            mlflow.set_tracking_uri(None)
        finally:
            os.chdir(here)
    r = runs.iloc[0]
    return s["data"]["n_train"] // 32 * 32 * epochs / r["metrics.train_seconds"], r["metrics.trial_seconds"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    study, cfg = quickstart_job("tkp-pcl")
    cfg.train.epochs = args.epochs
    splits = load_splits(study.data)
    bare, harness, trial_s = [], [], []
    for _ in range(args.repeats):  # interleaved, so drift hits both
        bare.append(bare_loop(cfg, splits, args.epochs))
        ips, ts = through_bench(args.epochs)
        harness.append(ips)
        trial_s.append(ts)
    b, h = statistics.median(bare), statistics.median(harness)
    row = {"epochs": args.epochs, "repeats": args.repeats, "bare_images_per_s": f"{b:.1f}",
           "bench_images_per_s": f"{h:.1f}", "ratio": f"{h / b:.3f}", "overhead_pct": f"{100 * (1 - h / b):.1f}",
           "bench_trial_seconds": f"{statistics.median(trial_s):.1f}"}  # fmt: skip
    for k, v in row.items():
        print(f"{k:22s} {v}")
    write_csv("harness_overhead", [row])


if __name__ == "__main__":
    main()
