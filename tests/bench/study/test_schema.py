"""Malformed study files: exit 2, one line naming the YAML path, nothing written."""

import pytest
from helpers import SMOKE, write_study

from bench.cli import main

CASES = [
    ({"variantz": {}}, "variantz: unknown key"),
    (
        {"variants.tkp-pcl": {"pooling.k_ratio": 1.5}},
        "variants.tkp-pcl.pooling.k_ratio: Input should be less than or equal to 1 (got 1.5)",
    ),
    (
        {"variants.tkp-pcl": {"pooling.k_rato": 0.1}},
        "variants.tkp-pcl.pooling.k_rato: unknown key; allowed: k, k_ratio, kind, lse_r",
    ),
    ({"base.pooling.kind": "median"}, "base.pooling.kind: Input should be 'max', 'topk', 'mean' or 'lse'"),
    ({"base.train.epochs": 0}, "base.train.epochs: Input should be greater than or equal to 1"),
    ({"base.train.lr": "fast"}, "base.train.lr: Input should be a valid number"),
    ({"seeds": "abc"}, "seeds: Input should be a valid list"),
    ({"seeds": [1, 1]}, "seeds: seeds must be unique"),
    ({"grid": {"loss.pce_wieght": [0.1]}}, "grid.loss.pce_wieght: unknown key"),
    ({"grid": {"pooling.k_ratio": [0.1, 0]}}, "grid.pooling.k_ratio: Input should be greater than 0"),
    ({"data.kind": "imagenet"}, "data: Input tag 'imagenet' found using 'kind' does not match"),
    ({"data.n_train": -3}, "data.n_train: Input should be greater than or equal to 1"),
    (
        {"base.model.embed_dim": 100, "base.model.num_heads": 3},
        "base.model: embed_dim (100) must be divisible by num_heads (3)",
    ),
    ({"name": "a b/c"}, "name: must be letters"),
    ({"variants": {}}, "variants: Dictionary should have at least 1 item"),
    (
        {"search": {"space": {"pooling.k_ratio": {"type": "float", "low": 0.5, "high": 0.1}}}},
        "search.space.pooling.k_ratio",
    ),
    ({"search": {"space": {"pooling.nope": {"type": "float", "low": 0.1, "high": 0.5}}}}, "search.space.pooling.nope"),
    (
        {"search": {"variant": "ghost", "space": {"pooling.k_ratio": {"type": "float", "low": 0.1, "high": 0.5}}}},
        "search.variant: 'ghost' is not a variant",
    ),
    # non-finite numbers: JSON (a stored configuration) has neither inf nor nan
    ({"base.train.lr": float("inf")}, "base.train.lr: Input should be a finite number (got inf)"),
    ({"base.train.lr": float("nan")}, "base.train.lr: Input should be a finite number (got nan)"),
    (
        {"variants.tkp-pcl": {"loss.pce_weight": float("inf")}},
        "variants.tkp-pcl.loss.pce_weight: Input should be a finite number (got inf)",
    ),
    (
        {"base.segment.eval_scales": [1.0, float("inf")]},
        "base.segment.eval_scales.1: Input should be a finite number (got inf)",
    ),
    ({"data.max_size": float("inf")}, "data.max_size: Input should be a finite number (got inf)"),
    ({"grid": {"train.lr": [0.1, float("-inf")]}}, "grid.train.lr: Input should be a finite number (got -inf)"),
    (
        {"search": {"space": {"train.lr": {"type": "float", "low": 0.001, "high": float("inf")}}}},
        "search.space.train.lr.high: Input should be a finite number (got inf)",
    ),
    (
        {"search": {"space": {"train.lr": {"type": "categorical", "choices": [0.1, float("nan")]}}}},
        "search.space.train.lr: Input should be a finite number (got nan)",
    ),
    (
        {"search": {"space": {"pooling.k_ratio": {"type": "float", "low": 0.5, "high": 1.5}}}},
        "search.space.pooling.k_ratio: Input should be less than or equal to 1 (got 1.5)",
    ),
    # seeds: what torch's and numpy's generators take (0 <= seed < 2**32)
    (
        {"seeds": [100000000000000000000]},
        "seeds.0: Input should be less than or equal to 4294967295 (got 100000000000000000000)",
    ),
    ({"data.seed": -1}, "data.seed: Input should be greater than or equal to 0 (got -1)"),
    ({"base.train.seed": 2**32}, "base.train.seed: Input should be less than or equal to 4294967295"),
    (
        {"search": {"seed": 2**32, "space": {"train.lr": {"type": "float", "low": 0.001, "high": 0.1}}}},
        "search.seed: Input should be less than or equal to 4294967295",
    ),
    (
        {"search": {"seeds": [0, 2**64], "space": {"train.lr": {"type": "float", "low": 0.001, "high": 0.1}}}},
        "search.seeds.1: Input should be less than or equal to 4294967295",
    ),
    (
        {"confirm": {"seeds": [0, -5], "baseline": "vit-pcm"}},
        "confirm.seeds.1: Input should be greater than or equal to 0",
    ),
    # epochs: a plausible bound, not a run that never ends
    (
        {"base.train.epochs": 1e12},
        "base.train.epochs: Input should be less than or equal to 10000 (got 1000000000000.0)",
    ),
    ({"base.segment.epochs": 20000}, "base.segment.epochs: Input should be less than or equal to 10000 (got 20000)"),
]


def run_bad(tmp_path, monkeypatch, capsys, path):
    monkeypatch.chdir(tmp_path)
    code = main(["run", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / ".bench").exists()
    return err


@pytest.mark.parametrize("changes,message", CASES, ids=[c[1].split(":")[0] for c in CASES])
def test_malformed_study_is_one_line_exit_2(tmp_path, monkeypatch, capsys, changes, message):
    path = write_study(tmp_path / "bad.yaml", changes)
    err = run_bad(tmp_path, monkeypatch, capsys, path)
    assert message in err, err
    assert str(path) in err


@pytest.mark.parametrize(
    "text,message",
    [
        ("name: x\nvariants: [unclosed\n", ":3:1: invalid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ("name: !!python/object/apply:os.system ['echo hacked']\n", "invalid YAML"),
    ],
)
def test_unreadable_study_files(tmp_path, monkeypatch, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert message in run_bad(tmp_path, monkeypatch, capsys, path)


def test_missing_study_file_and_missing_data(tmp_path, monkeypatch, capsys):
    assert "study file not found" in run_bad(tmp_path, monkeypatch, capsys, tmp_path / "nope.yaml")
    voc = write_study(tmp_path / "voc.yaml", data={"kind": "voc", "root": str(tmp_path / "VOC2012")})
    err = run_bad(tmp_path, monkeypatch, capsys, voc)
    assert f"{voc}: data.root: VOC root {tmp_path / 'VOC2012'} does not exist" in err
    (tmp_path / "VOC2012").mkdir()  # the root is there, its split files are not: found by the loader
    err = run_bad(tmp_path, monkeypatch, capsys, voc)
    assert err.startswith(f"bench: error: {voc}: data: VOC split file ") and "does not exist" in err
    (tmp_path / "VOC2012").rmdir()


def test_shipped_studies_are_valid():
    from bench.study import load_study, study_jobs

    counts = {}
    for path in sorted(SMOKE.parent.glob("*.yaml")):
        study = load_study(path)
        counts[study.name] = len(study_jobs(study)) or study.search.n_trials
    assert counts["quickstart"] == 12 and counts["smoke"] == 2
    assert counts["ablation_k"] == 18 and counts["ablation_pce"] == 30 and counts["search"] == 12
    from bench.study import confirm_total

    assert confirm_total(load_study(SMOKE.parent / "search.yaml")) == 6  # best config + vit-pcm x 3 seeds
    assert counts["voc2012"] == 4 and counts["coco2014"] == 4


def test_stored_configurations_read_back_equal():
    """What a trial stores (``model_dump_json``) reads back as the same configuration, for every
    job of every shipped study and the searched and confirmed configurations."""
    from bench.study import load_study, search_config, study_jobs, variant_config
    from tkp_pcl.config import MethodConfig

    configs = []
    for path in sorted(SMOKE.parent.glob("*.yaml")):
        study = load_study(path)
        configs += [job.config for job in study_jobs(study)]
        configs += [variant_config(study, v) for v in study.variants]
        if study.search is not None:
            low = {p: s.choices[-1] if hasattr(s, "choices") else s.low for p, s in study.search.space.items()}
            configs.append(search_config(study, low))
    assert len(configs) > 80
    for cfg in configs:
        assert MethodConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_voc2012_study_without_the_data_names_the_missing_path(tmp_path, monkeypatch, capsys):
    err = run_bad(tmp_path, monkeypatch, capsys, SMOKE.parent / "voc2012.yaml")
    assert (
        "voc2012.yaml: data.root: VOC root data/VOCdevkit/VOC2012 does not exist" in err
        and "VOCtrainval_11-May-2012.tar" in err
    )


# --- files that used to escape the one-line rule, run as a user would ---

SMOKE_TEXT = SMOKE.read_text()


def _yaml(changes: dict) -> bytes:
    import yaml

    d = yaml.safe_load(SMOKE_TEXT)
    d.update(changes)
    return yaml.safe_dump(d, sort_keys=False).encode()


BAD_FILES = {
    "binary": (bytes(range(256)) * 4, "a binary file, not YAML text"),
    "latin1": (
        SMOKE_TEXT.replace("description: ViT-PCM", "description: café ViT-PCM").encode("latin-1"),
        ":4: not UTF-8 text (byte 0xe9 at offset",
    ),
    "duplicate_seeds": ((SMOKE_TEXT + "seeds: [1, 2]\n").encode(), ": seeds: duplicate key (lines 25 and 26)"),
    "duplicate_name": ((SMOKE_TEXT + "name: other\n").encode(), ": name: duplicate key (lines 3 and 26)"),
    "duplicate_nested": (
        SMOKE_TEXT.replace("  seed: 0\n", "  seed: 0\n  seed: 1\n").encode(),
        ": data.seed: duplicate key (lines 7 and 8)",
    ),
    "optuna_storage": (
        (SMOKE_TEXT + "tracking: {optuna_storage: 'bogus://x'}\n").encode(),
        ": tracking.optuna_storage: unknown Optuna storage scheme 'bogus:'",
    ),
    "mlflow_uri": (
        (SMOKE_TEXT + "tracking: {mlflow_uri: 'bogus://x'}\n").encode(),
        ": tracking.mlflow_uri: MLflow has no tracking store for scheme 'bogus:'",
    ),
    "voc_root": (
        _yaml({"data": {"kind": "voc", "root": "no/VOC2012"}}),
        ": data.root: VOC root no/VOC2012 does not exist; download",
    ),
    "search_path": (
        _yaml({"search": {"space": {"train.bogus": {"type": "float", "low": 0.1, "high": 0.5}}}}),
        ": search.space.train.bogus: unknown key; allowed: ",
    ),
    "lr_inf": (
        SMOKE_TEXT.replace("lr: 0.002, monitor", "lr: .inf, monitor").encode(),
        ": base.train.lr: Input should be a finite number (got inf)",
    ),
    "pce_weight_nan": (
        SMOKE_TEXT.replace("loss.pce_weight: 0.0}", "loss.pce_weight: .nan}").encode(),
        ": variants.vit-pcm.loss.pce_weight: Input should be a finite number (got nan)",
    ),
    "seed_overflow": (
        SMOKE_TEXT.replace("seeds: [0]", "seeds: [100000000000000000000]").encode(),
        ": seeds.0: Input should be less than or equal to 4294967295 (got 100000000000000000000)",
    ),
    "epochs_1e12": (
        SMOKE_TEXT.replace("train: {epochs: 2,", "train: {epochs: 1.0e+12,").encode(),
        ": base.train.epochs: Input should be less than or equal to 10000",
    ),
    "variant_dotted": (
        _yaml({"variants": {"vit-pcm": {}, "tkp-pcl": {"train.lr.x": 0.1}}}),
        ": variants.tkp-pcl.train.lr.x: 'lr' is a value, not a section",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_study_file_subprocess_one_line_exit_2_nothing_written(tmp_path, case):
    """`python -m bench.cli run FILE` in an empty folder: exit 2, one line `bench: error: FILE: ...`."""
    import os
    import subprocess
    import sys

    content, message = BAD_FILES[case]
    (tmp_path / "bad.yaml").write_bytes(content)
    env = {**os.environ, "PYTHONPATH": str(SMOKE.parent.parent)}
    env.pop("MLFLOW_TRACKING_URI", None), env.pop("BENCH_OPTUNA_STORAGE", None)
    r = subprocess.run(
        [sys.executable, "-m", "bench.cli", "run", "bad.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("bench: error: bad.yaml") and message in lines[0], lines[0]
    assert "search.space.train.bogus.train" not in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


@pytest.mark.parametrize(
    "argv,env,message",
    [
        (["--storage", "bogus://x"], {}, "--storage: unknown Optuna storage scheme 'bogus:'"),
        (["--tracking-uri", "bogus://x"], {}, "--tracking-uri: MLflow has no tracking store for scheme 'bogus:'"),
        ([], {"BENCH_OPTUNA_STORAGE": "sqlite://"}, "$BENCH_OPTUNA_STORAGE: a SQLite Optuna storage names a file"),
        ([], {"MLFLOW_TRACKING_URI": "bogus://x"}, "$MLFLOW_TRACKING_URI: MLflow has no tracking store"),
    ],
)
def test_bad_urls_from_flags_and_environment(tmp_path, monkeypatch, capsys, argv, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    assert main(["run", *argv, str(SMOKE)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_url_checks_accept_what_the_libraries_open():
    from bench.study.urls import check_mlflow_uri, check_optuna_storage

    for ok in (
        "journal:.bench/optuna.journal",
        "sqlite:///x.db",
        "sqlite:////abs/x.db",
        "postgresql://u@h/db",
        "postgresql+psycopg2://u:p@h:5432/db",
        "mysql://u@h/db",
    ):
        check_optuna_storage(ok)
    for ok in (
        "sqlite:///mlflow.db",
        "mlruns",
        "./mlruns",
        "file:///tmp/mlruns",
        "http://127.0.0.1:5000",
        "https://mlflow.example.org",
        "postgresql://u@h/db",
        "mysql+pymysql://u@h/db",
        "databricks",
    ):
        check_mlflow_uri(ok)
    for bad in ("bogus://x", "journal:", "sqlite://", "x.db", "http://h"):
        with pytest.raises(ValueError):
            check_optuna_storage(bad)
    for bad in ("bogus://x", "sqlite://", "https://", "journal:x"):
        with pytest.raises(ValueError):
            check_mlflow_uri(bad)


def test_validating_a_study_imports_nothing_heavy():
    """The study file is read and validated, and a bad one refused, with pydantic and PyYAML
    only: torch, MLflow, Optuna, timm and pandas are not imported (the ~10 s a bad file took)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from bench.cli import main\n"
        f"assert main(['run', '--storage', 'journal:x', {str(SMOKE.parent / 'voc2012.yaml')!r}]) == 2\n"
        f"from bench.study import load_study, study_jobs; study_jobs(load_study({str(SMOKE)!r}))\n"
        "print(sorted(m for m in ('torch', 'mlflow', 'optuna', 'timm', 'pandas', 'scipy') if m in sys.modules))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=SMOKE.parent.parent
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
    assert "data.root: VOC root" in r.stderr


def test_pruner_settings_the_chosen_pruner_ignores_are_refused(tmp_path):
    from bench.study import StudyError, load_study

    space = {"pooling.k_ratio": {"type": "float", "low": 0.05, "high": 0.5}}
    ok = {"variant": "tkp-pcl", "pruner": "median", "pruner_warmup_epochs": 2, "space": space}
    assert load_study(write_study(tmp_path / "m.yaml", search=ok)).search.pruner_warmup_epochs == 2
    for pruner in ("hyperband", "none"):
        bad = {**ok, "pruner": pruner}
        with pytest.raises(
            StudyError, match=rf"search.pruner_warmup_epochs: read by the median pruner only, not by pruner '{pruner}'"
        ):
            load_study(write_study(tmp_path / "h.yaml", search=bad))


def test_threads_override_train_num_threads_outside_the_identity(tmp_path):
    from bench.study import load_study, study_jobs, with_execution_values

    study = load_study(write_study(tmp_path / "s.yaml", {"variants.tkp-pcl": {"train.num_threads": 3}}))
    two = with_execution_values(study, {"train.num_threads": 1})
    before, after = study_jobs(study), study_jobs(two)
    assert [j.config.train.num_threads for j in before] == [2, 3] and [j.config.train.num_threads for j in after] == [
        1,
        1,
    ]
    assert [j.config_hash for j in before] == [j.config_hash for j in after]


@pytest.mark.parametrize(
    "changes",
    [
        {"variants": {"vit-pcm": {}, "a b" * 5000: {}}},
        {"base.model.pretrained_file": "x" * 10_000},
        {"variants.tkp-pcl": {"train.lr.x": 0.1}, "base.train": {"lr": 0.1, "x" * 10_000: 1}},
        {"search": {"variant": "v" * 10_000, "space": {"train.lr": {"type": "float", "low": 0.001, "high": 0.1}}}},
        {"description": list(range(100_000))},
    ],
    ids=["variant_name", "pretrained_file", "unknown_key", "search_variant", "description"],
)
def test_an_error_quotes_a_long_value_cut(tmp_path, monkeypatch, capsys, changes):
    """One line, and a short one: a value an error quotes is cut to 80 characters."""
    err = run_bad(tmp_path, monkeypatch, capsys, write_study(tmp_path / "bad.yaml", changes))
    assert len(err) < 600 and "characters)" in err, err
