"""`bench report` on real studies run here: files, numbers recomputed from mlflow.search_runs,
booktabs LaTeX, incomplete studies flagged, errors, and the HTML rendered by headless Chromium."""

import re
import shutil
import subprocess

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import write_study
from scipy import stats

from bench.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    study = write_study(d / "smoke.yaml", seeds=[0, 1, 2])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        assert main(["run", str(study)]) == 0
        assert main(["report", str(study)]) == 0
    return d


def test_report_files(smoke_dir):
    out = smoke_dir / "reports" / "smoke"
    for f in [
        "report.md",
        "report.html",
        "tables/main.csv",
        "tables/main.tex",
        "tables/status.csv",
        "tables/per_class_iou.csv",
        "tables/per_class_iou.tex",
        "plots/variants.png",
        "plots/per_class_iou.png",
        "plots/training_curves.png",
        "plots/overlays.png",
        "tables/protocol.csv",
        "tables/protocol.tex",
    ]:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    md = (out / "report.md").read_text()
    assert "paired t-test" in md and "tkp-pcl vs vit-pcm" in md and "Incomplete" not in md
    assert "## Protocol" in md and "protocol elements differ from ViT-PCM's published protocol" in md
    card = pd.read_csv(out / "tables" / "protocol.csv", index_col="element", keep_default_na=False)
    assert card.loc["pooling", "this study"] == "vit-pcm: max; tkp-pcl: topk k_ratio=0.1"
    assert card.loc["pooling", "mark"] == "differs: tkp-pcl"
    assert card.loc["train size", "this study"] == "48 px (6x6 patches)"
    for img in re.findall(r"\]\((plots/[^)]+)\)", md):
        assert (out / img).is_file()


def test_main_table_equals_a_recomputation_from_mlflow(smoke_dir):
    mlflow.set_tracking_uri(f"sqlite:///{smoke_dir}/mlflow.db")
    try:
        runs = mlflow.search_runs(experiment_names=["smoke"])
    finally:
        mlflow.set_tracking_uri(None)
    trials = runs[(runs["tags.bench.role"] == "trial") & (runs["status"] == "FINISHED")]
    table = pd.read_csv(smoke_dir / "reports/smoke/tables/main.csv").set_index("group")
    for variant in ("vit-pcm", "tkp-pcl"):
        v = trials[trials["tags.bench.variant"] == variant].sort_values("tags.bench.seed")
        for m in ("pseudo_miou", "pseudo_miou_crf"):
            assert table.loc[variant, f"{m}_mean"] == pytest.approx(v[f"metrics.{m}"].mean())
            assert table.loc[variant, f"{m}_std"] == pytest.approx(v[f"metrics.{m}"].std(ddof=1))
        assert table.loc[variant, "n"] == 3
    a = (
        trials[trials["tags.bench.variant"] == "tkp-pcl"]
        .sort_values("tags.bench.seed")["metrics.pseudo_miou"]
        .to_numpy()
    )
    b = (
        trials[trials["tags.bench.variant"] == "vit-pcm"]
        .sort_values("tags.bench.seed")["metrics.pseudo_miou"]
        .to_numpy()
    )
    assert table.loc["tkp-pcl", "pseudo_miou_diff"] == pytest.approx(np.mean(a - b))
    assert table.loc["tkp-pcl", "pseudo_miou_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    md = (smoke_dir / "reports/smoke/report.md").read_text()
    best = table["pseudo_miou_mean"].idxmax()
    assert f"**{100 * table.loc[best, 'pseudo_miou_mean']:.1f} ± " in md


def test_latex_is_booktabs(smoke_dir):
    tex = (smoke_dir / "reports/smoke/tables/main.tex").read_text()
    assert r"\caption{smoke: mIoU (\%), mean $\pm$ std over seeds}" in tex and r"\label{tab:smoke-main}" in tex
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and r"\textbf{" in tex
    body = tex.split(r"\midrule")[1]
    assert "±" not in body and not re.search(r"(?<!\\)_", body)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_html_renders_in_headless_chromium_with_every_image(smoke_dir, tmp_path):
    page = smoke_dir / "reports/smoke/report.html"
    dom = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    n_img = page.read_text().count("<img ")
    assert n_img >= 4
    assert 'data-images-loaded="true"' in dom, dom[:500]
    assert f'data-images="{n_img}"' in dom
    assert dom.count("<table") >= 1 and "tkp-pcl" in dom


def test_report_with_missing_artifacts_leaves_out_what_it_cannot_draw(smoke_dir, tmp_path, monkeypatch, capsys):
    """Issue 10, case 7: artifacts deleted from the store; the report is written without the
    figures that need them, says so in the report and on stderr."""
    monkeypatch.chdir(smoke_dir)
    art, hidden = smoke_dir / "mlartifacts", smoke_dir / "mlartifacts.hidden"
    mlflow.set_tracking_uri(f"sqlite:///{smoke_dir}/mlflow.db")
    try:
        runs = mlflow.search_runs(experiment_names=["smoke"])
    finally:
        mlflow.set_tracking_uri(None)
    run = runs[(runs["tags.bench.variant"] == "tkp-pcl") & (runs["tags.bench.seed"] == "0")]["run_id"].item()
    one = next(art.rglob(f"{run}/**/examples.npz"))
    one.rename(tmp_path / "examples.npz")
    try:  # one run's examples gone: the next seed stands in
        assert main(["report", "smoke.yaml", "--out", str(tmp_path / "part")]) == 0
    finally:
        (tmp_path / "examples.npz").rename(one)
    err = capsys.readouterr().err
    assert "bench: warning: Missing artifacts: examples.npz" in err and "tkp-pcl seed 0;" in err
    assert (tmp_path / "part/plots/overlays.png").is_file()
    art.rename(hidden)
    try:  # the whole artifact store gone
        assert main(["report", "smoke.yaml", "--out", str(tmp_path / "none")]) == 0
    finally:
        hidden.rename(art)
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("bench: warning:")]) == 1
    md = (tmp_path / "none/report.md").read_text()
    assert (
        "> **Warning:** Missing artifacts: examples.npz" in md
        and "vit-pcm seeds 0, 1, 2" in md
        and "the figure is left out" in md
    )
    assert not (tmp_path / "none/plots/overlays.png").exists() and "overlays.png" not in md
    for f in ("variants.png", "per_class_iou.png", "training_curves.png"):
        assert (tmp_path / "none/plots" / f).is_file() and f"plots/{f}" in md
    assert "Missing artifacts" in (tmp_path / "none/report.html").read_text()


def test_incomplete_study_is_flagged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = write_study(tmp_path / "s.yaml", {"variants.broken": {"train.lr": 1e30}})
    assert main(["run", str(study)]) == 1
    assert main(["report", str(study)]) == 0
    md = (tmp_path / "reports/smoke/report.md").read_text()
    assert "Incomplete study" in md and "broken: 0/1 seeds finished, 1 failed" in md
    status = pd.read_csv(tmp_path / "reports/smoke/tables/status.csv").set_index("group")
    assert status.loc["broken", "FAILED"] == 1 and status.loc["tkp-pcl", "FINISHED"] == 1


def test_report_errors_are_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["report", "nosuchstudy"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no study 'nosuchstudy'" in err
    study = write_study(tmp_path / "s.yaml", {"variants": {"broken": {"train.lr": 1e30}}})
    assert main(["run", str(study)]) == 1
    capsys.readouterr()
    assert main(["report", str(study)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no finished trial" in err
    assert not (tmp_path / "reports" / "smoke" / "report.md").exists()


def test_search_report_has_history_importances_and_best_trials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    search = {
        "sampler": "random",
        "n_trials": 3,
        "pruner": "none",
        "seed": 1,
        "space": {
            "train.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
            "pooling.k_ratio": {"type": "float", "low": 0.05, "high": 0.5},
        },
    }
    study = write_study(tmp_path / "s.yaml", search=search)
    assert main(["run", str(study)]) == 0
    assert main(["report", str(study)]) == 0
    out = tmp_path / "reports/smoke"
    assert (out / "plots/optuna_history.png").is_file() and (out / "plots/optuna_importances.png").is_file()
    best = pd.read_csv(out / "tables/best_trials.csv")
    assert len(best) == 3 and {"value", "train.lr", "pooling.k_ratio"} <= set(best.columns)
    assert best["value"].is_monotonic_decreasing
