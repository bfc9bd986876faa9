"""Achieved FLOP/s of the quickstart's three compute stages against this machine's dense matmul
FLOP/s at the same dtype and thread count, in float32 and under bf16 autocast, side by side:

- stage 1: one training step of ``train_stage1`` (the study's loss: ViT-PCM's mosaics, PCE);
- pseudo labels: one forward of a batch at ``pseudo.input_size`` (160 px), as the monitor and
  ``make_pseudo_labels`` run it;
- stage 2: one training step of the segmentation network at its crop size.

    python benchmarks/compute_utilisation.py [--steps 5] [--rounds 5]

The bf16 rows are measured only where this CPU has native bf16 (``tkp_pcl.runtime``); FLOPs are
counted by ``torch.utils.flop_counter`` on the real modules.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import emit, matmul_gflops, quickstart_job
from torch.utils.flop_counter import FlopCounterMode

from tkp_pcl.model import PatchClassifier, Segmenter
from tkp_pcl.pseudo.labels import predict_class_maps
from tkp_pcl.runtime import cpu_has_native_bf16
from tkp_pcl.stage1 import stage1_loss


def flops_of(fn: Callable[[], None]) -> int:
    """FLOPs of one call of ``fn``."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def interleaved_seconds(calls: dict[str, Callable[[], None]], steps: int, rounds: int) -> dict[str, float]:
    """Seconds per call of each of ``calls``, the best of ``rounds`` rounds of ``steps`` calls,
    the calls taking turns round by round (this VM's speed drifts within minutes: the one
    measured first must not get the faster machine)."""
    for fn in calls.values():
        for _ in range(3):
            fn()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / steps)
    return best


def stage_calls(cfg, amp: bool) -> dict[str, Callable[[], None]]:
    """One call of each stage's unit of work, under bf16 autocast when ``amp``."""
    torch.manual_seed(0)
    c, b, s = 7, cfg.train.batch_size, cfg.model.img_size
    model = PatchClassifier(cfg.model, c)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    labels = (torch.rand(b, c) < 0.4).float()
    labels[:, 0] = 1
    images = torch.randint(0, 255, (b, 3, s, s), dtype=torch.uint8)
    big = torch.randint(0, 255, (b, 3, cfg.pseudo.input_size, cfg.pseudo.input_size), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    seg = Segmenter(cfg.segment, cfg.model, c)
    seg_opt = torch.optim.AdamW(seg.parameters(), lr=1e-3)
    sb = cfg.segment.batch_size
    seg_images = torch.randn(sb, 3, s, s)
    seg_labels = torch.randint(0, c, (sb, s, s))
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp)  # noqa: E731

    def stage1() -> None:
        model.train()
        loss = stage1_loss(model, images, labels, cfg, gen, cfg.loss.pce_weight > 0, autocast=(amp, torch.bfloat16))
        opt.zero_grad(set_to_none=True)
        loss["loss"].backward()
        opt.step()

    def pseudo() -> None:
        model.eval()
        with autocast():
            predict_class_maps(model, big, labels.bool())

    def stage2() -> None:
        with autocast():
            logits = seg(seg_images)
        loss = F.cross_entropy(logits.float(), seg_labels)
        seg_opt.zero_grad(set_to_none=True)
        loss.backward()
        seg_opt.step()

    return {"stage 1 step": stage1, "pseudo-label forward": pseudo, "stage 2 step": stage2}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    _, cfg = quickstart_job("tkp-pcl")
    precisions = ["float32", "bf16"] if cpu_has_native_bf16() else ["float32"]
    calls = {p: stage_calls(cfg, p == "bf16") for p in precisions}
    peaks = {p: matmul_gflops(dtype=torch.bfloat16 if p == "bf16" else torch.float32) for p in precisions}
    rows = []
    for stage in calls["float32"]:
        flops = flops_of(calls["float32"][stage])
        secs = interleaved_seconds({p: calls[p][stage] for p in precisions}, args.steps, args.rounds)
        for p in precisions:
            rows.append(
                {
                    "stage": stage,
                    "precision": p,
                    "gflop_per_call": round(flops / 1e9, 2),
                    "seconds_per_call": round(secs[p], 4),
                    "speedup_vs_float32": round(secs["float32"] / secs[p], 2),
                    "achieved_gflops": round(flops / secs[p] / 1e9, 1),
                    "matmul_2048_gflops": round(peaks[p], 1),
                    "fraction_of_matmul": round(flops / secs[p] / 1e9 / peaks[p], 3),
                }
            )
    emit("compute_utilisation", rows)


if __name__ == "__main__":
    main()
