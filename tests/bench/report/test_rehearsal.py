"""The rehearsal's projection: arithmetic on measured rows, written as CSV and JSON."""

import json

import pytest

from bench.report.rehearsal import ACCELERATORS, Projection, StageRow, records, write


def row(**kw) -> StageRow:
    base = dict(
        variant="v",
        stage="stage 1",
        measured="1 step of 2",
        seconds_per_image=2.0,
        flops_per_image=1e12,
        peak_rss=2**30,
        cuda_peak=None,
        images=36_000,
    )
    return StageRow(**{**base, **kw})


def test_projection_multiplies_the_study_images_by_the_measured_rates():
    tot = Projection("H100", 0.4).totals(row())
    assert tot["total_flops"] == pytest.approx(3.6e16)
    assert tot["hours_here"] == pytest.approx(20.0)  # 2 s x 36,000 images
    assert tot["gpu_hours"] == pytest.approx(3.6e16 / (989e12 * 0.4) / 3600)
    assert Projection("A100", 0.8).totals(row())["gpu_hours"] == pytest.approx(3.6e16 / (312e12 * 0.8) / 3600)
    assert Projection().totals(row(flops_per_image=None))["gpu_hours"] is None
    assert set(ACCELERATORS) == {"A100", "H100", "H200", "L40S", "V100"}


def test_rows_are_written_as_csv_and_json_with_the_assumptions(tmp_path):
    rows = [row(), row(stage="pseudo labels", flops_per_image=5e11, images=1464)]
    csv_path, json_path = write(rows, Projection("L40S", 0.5), tmp_path, {"matmul_gflops_fp32": 40.0})
    lines = csv_path.read_text().splitlines()
    assert lines[0].split(",")[:3] == ["variant", "stage", "measured"] and len(lines) == 3
    js = json.loads(json_path.read_text())
    assert js["accelerator"] == "L40S" and js["utilisation"] == 0.5 and js["peak_flops"] == 362e12
    assert "projection" in js and js["matmul_gflops_fp32"] == 40.0
    assert js["rows"] == records(rows, Projection("L40S", 0.5))
