"""Stage-1 training throughput through `bench run` (MLflow logging, Optuna reporting, per-epoch
held-out pseudo mIoU and checkpoint) against a bare PyTorch loop over the same model, data,
losses, epochs and seed, in the same process. The bare loop runs twice: training only, and with
the same per-epoch held-out pseudo mIoU the study asks for (``train.monitor_images``), so the
harness's own overhead and the cost of that monitor are told apart.

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
from common import ROOT, emit, quickstart_job
from torch.utils.data import DataLoader

from tkp_pcl.data import load_splits
from tkp_pcl.model import PatchClassifier
from tkp_pcl.stage1 import ImageLabelDataset, monitor_miou, stage1_loss


def bare_loop(cfg, splits, epochs: int, monitor: bool = False) -> float:
    """The training steps and nothing else; returns images/s over the same span as the
    harness's ``train_seconds`` (building the model and loader included)."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    model = PatchClassifier(cfg.model, splits.train.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    loader = DataLoader(
        ImageLabelDataset(splits.train, cfg.model.img_size),
        batch_size=cfg.train.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    lc, n, gen = cfg.loss, 0, torch.Generator().manual_seed(cfg.train.seed)
    for epoch in range(epochs):
        for images, labels in loader:
            b = images.shape[0]
            use_pce = lc.pce_weight > 0 and epoch >= lc.pce_warmup_epochs
            loss = stage1_loss(model, images, labels, cfg, gen, use_pce)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            n += b
        if monitor:  # the same per-epoch held-out pseudo mIoU that train_stage1 computes
            monitor_miou(model, splits.val.subset(range(cfg.train.monitor_images)), cfg, "cpu")
            model.train()
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


def per_epoch_bookkeeping(cfg, splits, reps: int = 10) -> dict[str, float]:
    """Seconds per epoch of each thing the harness adds around the training steps, timed
    directly: the atomic checkpoint, one MLflow metrics batch, Optuna's report + user attribute +
    pruning check, and the held-out pseudo mIoU (the method's monitor)."""
    import optuna

    from bench.stores import Tracker, open_storage
    from tkp_pcl.stage1.checkpoint import save as save_checkpoint

    model = PatchClassifier(cfg.model, splits.train.num_classes)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(2, 3, cfg.model.img_size, cfg.model.img_size, dtype=torch.uint8)).probs.sum().backward()
    opt.step()
    monitor = splits.val.subset(range(cfg.train.monitor_images))
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        tracker = Tracker(f"sqlite:///{d}/m.db", "x")
        run_id = tracker.start_trial(tracker.parent_run(), "r", {}, {})
        trial = optuna.create_study(storage=open_storage(f"journal:{d}/j.log")).ask()
        steps = {
            "checkpoint": lambda i: save_checkpoint(
                {"model": model.state_dict(), "optimizer": opt.state_dict()}, f"{d}/c.ckpt"
            ),
            "mlflow_log": lambda i: tracker.log_metrics(run_id, {f"m{k}": 0.5 for k in range(8)}, step=i),
            "optuna": lambda i: (trial.report(0.5, i), trial.set_user_attr("epoch", i), trial.should_prune()),
            "monitor": lambda i: monitor_miou(model, monitor, cfg, "cpu"),
        }
        for name, fn in steps.items():
            fn(0)
            t0 = time.perf_counter()
            for i in range(reps):
                fn(i + 1)
            out[name] = (time.perf_counter() - t0) / reps
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    study, cfg = quickstart_job("tkp-pcl")
    cfg.train.epochs = args.epochs
    splits = load_splits(study.data)
    bare, bare_mon, harness, trial_s = [], [], [], []
    for _ in range(args.repeats):  # interleaved, so drift hits all three
        bare.append(bare_loop(cfg, splits, args.epochs))
        bare_mon.append(bare_loop(cfg, splits, args.epochs, monitor=True))
        ips, ts = through_bench(args.epochs)
        harness.append(ips)
        trial_s.append(ts)
    b, bm, h = statistics.median(bare), statistics.median(bare_mon), statistics.median(harness)
    row = {
        "epochs": args.epochs,
        "repeats": args.repeats,
        "bare_images_per_s": f"{b:.1f}",
        "bare_with_monitor_images_per_s": f"{bm:.1f}",
        "bench_images_per_s": f"{h:.1f}",
        "harness_overhead_pct": f"{100 * (1 - h / bm):.1f}",
        "overhead_vs_training_only_pct": f"{100 * (1 - h / b):.1f}",
        "monitor_cost_pct": f"{100 * (1 - bm / b):.1f}",
        "bench_trial_seconds": f"{statistics.median(trial_s):.1f}",
    }
    epoch_s = (len(splits.train) // cfg.train.batch_size * cfg.train.batch_size) / b
    book = per_epoch_bookkeeping(cfg, splits)
    bookkeeping = book["checkpoint"] + book["mlflow_log"] + book["optuna"]
    row.update({f"{k}_ms_per_epoch": f"{1000 * v:.1f}" for k, v in book.items()})
    row.update(
        {
            "epoch_seconds": f"{epoch_s:.2f}",
            "bookkeeping_pct_of_epoch": f"{100 * bookkeeping / epoch_s:.2f}",
            "monitor_pct_of_epoch": f"{100 * book['monitor'] / epoch_s:.2f}",
        }
    )
    emit("harness_overhead", [row])


if __name__ == "__main__":
    main()
