"""The paper's claim on the quickstart: TKP-PCL vs max pooling (vit-pcm) over 3 seeds, with the
report's paired test; also the study's wall time and peak memory (RSS).

    python benchmarks/quickstart_claim.py [--study studies/quickstart.yaml]

Runs `bench run` then `bench report` in a fresh temporary directory.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import ROOT, emit

from bench.study import load_study


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", default=str(ROOT / "studies" / "quickstart.yaml"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "bench.cli", "run", args.study], cwd=tmp)
        wall = time.perf_counter() - t0
        # the largest resident set of any finished descendant (bench, or a CRF worker), in KiB
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        if run.returncode != 0:
            raise SystemExit(f"bench run exited {run.returncode}")
        subprocess.run([sys.executable, "-m", "bench.cli", "report", args.study], cwd=tmp, check=True)
        name = load_study(args.study).name  # `bench report` writes reports/<study name>/
        table = pd.read_csv(Path(tmp) / "reports" / name / "tables" / "main.csv").set_index("group")
    rows = []
    for metric in ("pseudo_miou", "pseudo_miou_crf", "seg_miou"):
        if f"{metric}_mean" not in table:
            continue
        t, b = table.loc["tkp-pcl"], table.loc["vit-pcm"]
        rows.append(
            {
                "metric": metric,
                "vit_pcm": f"{100 * b[f'{metric}_mean']:.1f} ± {100 * b[f'{metric}_std']:.1f}",
                "tkp_pcl": f"{100 * t[f'{metric}_mean']:.1f} ± {100 * t[f'{metric}_std']:.1f}",
                "diff_points": f"{100 * t[f'{metric}_diff']:+.1f}",
                "paired_t_p": f"{t[f'{metric}_p']:.2g}",
                "seeds": int(t["n"]),
                "wall_seconds": f"{wall:.0f}",
                "peak_rss_gib": f"{peak_gib:.2f}",
            }
        )
    emit("quickstart_claim", rows)


if __name__ == "__main__":
    main()
