"""Dense CRF over a split of 320x320 images with 21 labels: 1 process vs N (the pool that
`make_pseudo_labels` uses).

    python benchmarks/crf_scaling.py [--images 24] [--workers 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from common import emit
from scipy.ndimage import zoom

from tkp_pcl.config import CRFConfig
from tkp_pcl.data.synthetic import synthetic_split
from tkp_pcl.pseudo import crf_refine


def jobs(n: int, size: int = 320, labels: int = 21):
    """Real synthetic scenes at 320 px with smooth 21-class probability maps (as upsampled patch
    maps are)."""
    split = synthetic_split("val", n, seed=0, size=size, min_size=40, max_size=220)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        coarse = rng.normal(0, 2, (labels, 20, 20)).astype(np.float32)
        logits = zoom(coarse, (1, size / 20, size / 20), order=1)
        p = np.exp(logits - logits.max(0))
        out.append((split.load_image(i), (p / p.sum(0)).astype(np.float32), np.arange(labels)))
    return out


def run(items, workers: int, params: CRFConfig) -> float:
    t0 = time.perf_counter()
    if workers == 1:
        for img, probs, cls in items:
            crf_refine(img, probs, cls, params)
    else:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            list(pool.map(crf_refine, *zip(*items), [params] * len(items)))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    items = jobs(args.images)
    params = CRFConfig()  # ViT-PCM's: 10 iterations, bilateral sxy 67 srgb 3
    run(items[:2], 1, params)  # warm up
    t1 = run(items, 1, params)
    tn = run(items, args.workers, params)
    row = {
        "images": args.images,
        "size": 320,
        "labels": 21,
        "workers": args.workers,
        "seconds_1_process": f"{t1:.2f}",
        f"seconds_{args.workers}_processes": f"{tn:.2f}",
        "seconds_per_image_1": f"{t1 / args.images:.3f}",
        f"seconds_per_image_{args.workers}": f"{tn / args.images:.3f}",
        "speedup": f"{t1 / tn:.2f}",
    }
    emit("crf_scaling", [row])


if __name__ == "__main__":
    main()
