"""What ``bench run --rehearse`` measured, and the whole study's cost projected from it: one
row per variant and stage, printed as a table and written as CSV and JSON.

Measured (on this machine, on the rehearsal's few images): seconds per image, peak memory,
FLOPs per image (``FlopCounterMode`` on the real model). Projected (arithmetic, not a
measurement): the study's images through each stage times those figures, and GPU-hours on a
named accelerator at an assumed utilisation of its peak dense bf16 FLOP/s.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

#: Peak dense bf16 tensor FLOP/s of one GPU (data sheets, SXM parts, no sparsity; V100: fp16).
ACCELERATORS: dict[str, float] = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "L40S": 362e12, "V100": 125e12}
DEFAULT_ACCELERATOR = "H100"
DEFAULT_UTILISATION = 0.4


@dataclass
class StageRow:
    """One stage of one variant: what the rehearsal ran (``measured``), its seconds and FLOPs
    per image, peak process RSS and CUDA peak (bytes), and ``images``: how many images pass
    through the stage in the whole study (every trial of the variant; epochs counted)."""

    variant: str
    stage: str
    measured: str
    seconds_per_image: float
    flops_per_image: float | None
    peak_rss: int
    cuda_peak: int | None
    images: float
    note: str = ""


@dataclass(frozen=True)
class Projection:
    """The accelerator the GPU-hours are projected on and the share of its peak assumed."""

    accelerator: str = DEFAULT_ACCELERATOR
    utilisation: float = DEFAULT_UTILISATION

    @property
    def peak(self) -> float:
        return ACCELERATORS[self.accelerator]

    def totals(self, row: StageRow) -> dict[str, float | None]:
        """The row's projected total FLOPs, hours on this machine and GPU-hours."""
        flops = None if row.flops_per_image is None else row.flops_per_image * row.images
        gpu_h = None if flops is None else flops / (self.peak * self.utilisation) / 3600
        return {"total_flops": flops, "hours_here": row.seconds_per_image * row.images / 3600, "gpu_hours": gpu_h}


def records(rows: list[StageRow], proj: Projection) -> list[dict]:
    """The rows with their projections, as plain dicts (CSV/JSON)."""
    return [{**asdict(r), **proj.totals(r)} for r in rows]


def write(rows: list[StageRow], proj: Projection, out_dir: Path, about: dict) -> tuple[Path, Path]:
    """``rehearsal.csv`` (the rows) and ``rehearsal.json`` (``about``: the machine, the
    projection's assumptions; and the rows) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    recs = records(rows, proj)
    csv_path, json_path = out_dir / "rehearsal.csv", out_dir / "rehearsal.json"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(recs[0]) if recs else ["variant"])
        w.writeheader()
        w.writerows(recs)
    meta = {
        **about,
        "accelerator": proj.accelerator,
        "peak_flops": proj.peak,
        "utilisation": proj.utilisation,
        "projection": "total_flops, hours_here and gpu_hours are projections, not measurements",
    }
    json_path.write_text(json.dumps({**meta, "rows": recs}, indent=1))
    return csv_path, json_path


def _num(x: float | None, scale: float = 1.0, fmt: str = "{:.3g}") -> str:
    return "" if x is None else fmt.format(x / scale)


def table(rows: list[StageRow], proj: Projection, title: str):
    """A rich table of the rows: measured columns, then the projection's, and a total per variant."""
    from rich.table import Table

    t = Table(
        title=title,
        caption=f"* projection, not a measurement: {proj.accelerator} at {proj.utilisation:.0%} of "
        f"{proj.peak / 1e12:.0f} TFLOP/s bf16; the CRF (CPU) is in hours here, not in GPU-hours",
    )
    heads = [
        "variant",
        "stage",
        "ran here",
        "s/image",
        "peak GB",
        "GFLOP/image",
        "images in study",
        "PFLOP*",
        "hours here*",
        f"{proj.accelerator} GPU-h*",
    ]
    for h in heads:
        t.add_column(h, justify="left" if h in ("variant", "stage", "ran here") else "right")
    by_variant: dict[str, list[StageRow]] = {}
    for r in rows:
        by_variant.setdefault(r.variant, []).append(r)
    for variant, vrows in by_variant.items():
        sums = {"total_flops": 0.0, "hours_here": 0.0, "gpu_hours": 0.0}
        for r in vrows:
            tot = proj.totals(r)
            sums = {k: v + (tot[k] or 0.0) for k, v in sums.items()}
            gb = _num(r.cuda_peak, 1e9) + " (CUDA)" if r.cuda_peak else _num(r.peak_rss, 1e9)
            t.add_row(
                variant,
                r.stage + (f" [dim]({r.note})[/]" if r.note else ""),
                r.measured,
                _num(r.seconds_per_image),
                gb,
                _num(r.flops_per_image, 1e9, "{:.4g}"),
                f"{r.images:,.0f}",
                _num(tot["total_flops"], 1e15),
                _num(tot["hours_here"]),
                _num(tot["gpu_hours"]),
            )
        t.add_row(
            variant,
            "[bold]total[/]",
            "",
            "",
            "",
            "",
            "",
            _num(sums["total_flops"], 1e15),
            _num(sums["hours_here"]),
            _num(sums["gpu_hours"]),
            end_section=True,
        )
    return t
