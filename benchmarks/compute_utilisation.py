"""Achieved FLOP/s of a stage-1 training step (quickstart model) against this machine's dense
matmul FLOP/s at the same dtype and thread count.

    python benchmarks/compute_utilisation.py [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import emit, quickstart_job
from torch.utils.flop_counter import FlopCounterMode

from tkp_pcl.model import PatchClassifier
from tkp_pcl.stage1 import stage1_loss


def matmul_flops(n: int, k: int, m: int, seconds: float = 2.0) -> float:
    """Sustained FLOP/s of an (n, k) @ (k, m) float32 matmul."""
    a, b = torch.randn(n, k), torch.randn(k, m)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n * k * m * reps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    _, cfg = quickstart_job("tkp-pcl")
    torch.manual_seed(0)
    model = PatchClassifier(cfg.model, 7)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    b, s = cfg.train.batch_size, cfg.model.img_size
    images = torch.randint(0, 255, (b, 3, s, s), dtype=torch.uint8)
    labels = (torch.rand(b, 7) < 0.4).float()
    labels[:, 0] = 1
    gen = torch.Generator().manual_seed(0)

    def step() -> None:  # the training step of train_stage1, with the study's own loss settings
        loss = stage1_loss(model, images, labels, cfg, gen, use_pce=cfg.loss.pce_weight > 0)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    dt = (time.perf_counter() - t0) / args.steps
    achieved = flops / dt
    d = cfg.model.embed_dim
    tokens = 2 * b * (s // cfg.model.patch_size) ** 2
    peak_square = matmul_flops(2048, 2048, 2048)
    peak_shape = matmul_flops(tokens, d, 3 * d)  # the ViT's own qkv projection shape
    rows = [
        {
            "step_gflop": f"{flops / 1e9:.2f}",
            "step_seconds": f"{dt:.4f}",
            "images_per_second": f"{2 * b / dt:.1f}",
            "achieved_gflops": f"{achieved / 1e9:.1f}",
            "matmul_2048_gflops": f"{peak_square / 1e9:.1f}",
            "matmul_qkv_shape_gflops": f"{peak_shape / 1e9:.1f}",
            "fraction_of_2048_peak": f"{achieved / peak_square:.3f}",
            "fraction_of_qkv_shape": f"{achieved / peak_shape:.3f}",
        }
    ]
    emit("compute_utilisation", rows)


if __name__ == "__main__":
    main()
