"""The honest-search protocol, pure parts: the tune split, its schema, the seeds of a
search trial and the confirmation jobs. No training."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from helpers import write_study

from bench.cli import main
from bench.records import stage_of
from bench.run.queue import confirmation_todo, search_spent
from bench.run.splits import REPORT_IDS_FILE, TUNE_IDS_FILE, check_disjoint, concat_splits, tune_indices
from bench.run.splits import tune_splits as protocol_splits
from bench.run.trial import run_tags, seed_values
from bench.study import (
    StudyError,
    confirm_total,
    confirmation_jobs,
    load_study,
    rank_trials,
    search_config,
    trial_attrs,
    variant_config,
    with_seed,
)
from bench.study.plan import protocol_rows as plan_rows
from tkp_pcl.data import load_splits
from tkp_pcl.data.synthetic import synthetic_split

SPACE = {
    "pooling.k_ratio": {"type": "float", "low": 0.05, "high": 0.5},
    "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
}
SEARCH = {"variant": "tkp-pcl", "n_trials": 3, "seed": 7, "space": SPACE, "tune": {"count": 8}, "seeds": [0, 1]}
CONFIRM = {"top_n": 2, "seeds": [10, 11, 12], "baseline": "vit-pcm"}


def study_file(tmp_path, search=SEARCH, confirm=CONFIRM, changes=None):
    top = {"search": search} | ({"confirm": confirm} if confirm is not None else {})
    return write_study(tmp_path / "s.yaml", changes, **top)


# --- tune split ------------------------------------------------------------------------------


def test_tune_indices_are_a_deterministic_disjoint_partition():
    ids = [f"img{i:03d}" for i in range(50)]
    tune, report = tune_indices(ids, seed=3, count=10)
    assert len(tune) == 10 and len(report) == 40
    assert sorted(tune + report) == list(range(50)) and not set(tune) & set(report)
    assert tune_indices(ids, seed=3, count=10) == (tune, report)
    assert tune_indices(ids, seed=4, count=10)[0] != tune  # the seed chooses
    # the choice depends on the ids, not on their order
    rev = ids[::-1]
    assert sorted(rev[i] for i in tune_indices(rev, seed=3, count=10)[0]) == sorted(ids[i] for i in tune)
    assert len(tune_indices(ids, seed=0, fraction=0.2)[0]) == 10
    assert len(tune_indices(ids[:3], seed=0, fraction=0.01)[0]) == 1  # at least one


def test_tune_split_leaving_nothing_to_report_is_refused():
    with pytest.raises(StudyError, match=r"^search.tune.count: 5 tune images would leave none of the 5"):
        tune_indices(list("abcde"), seed=0, count=5)


def test_overlap_is_one_line_naming_the_split():
    check_disjoint(["a", "b"], {"val": ["c"]})
    with pytest.raises(StudyError) as e:
        check_disjoint(["a", "b"], {"pseudo-label (report)": ["c", "b"], "val": []})
    assert str(e.value).startswith(
        "search.tune: 1 tune image(s) are also in the pseudo-label (report) split (e.g. 'b')"
    )
    assert "\n" not in str(e.value)


def test_concat_splits_reads_both_parts():
    a, b = synthetic_split("train", 3, size=32), synthetic_split("tune", 2, size=32)
    ab = concat_splits("both", a, b)
    assert ab.ids == ["train_00000", "train_00001", "train_00002", "tune_00000", "tune_00001"]
    assert (ab.load_image(4) == b.load_image(1)).all() and (ab.load_mask(1) == a.load_mask(1)).all()
    assert ab.all_labels().shape == (5, a.num_classes)


def test_synthetic_tune_split_is_its_own_stream(tmp_path):
    study = load_study(study_file(tmp_path))
    splits = load_splits(study.data)
    ps = protocol_splits(study, splits)
    assert ps.tune_ids == [f"tune_{i:05d}" for i in range(8)]
    assert ps.report_ids == splits.pseudo.ids and not set(ps.tune_ids) & set(ps.report_ids)
    # a search trial reads the tune masks only (pseudo labels and monitor); both stages train on train + tune
    assert ps.search.pseudo.ids == ps.search.val.ids == ps.tune_ids
    assert ps.search.train.ids == ps.report.train.ids == splits.train.ids + ps.tune_ids
    assert ps.report.val.ids == splits.val.ids
    ps.write_ids(tmp_path)
    assert (tmp_path / TUNE_IDS_FILE).read_text().split() == ps.tune_ids
    assert (tmp_path / REPORT_IDS_FILE).read_text().split() == ps.report_ids
    no_tune = load_study(write_study(tmp_path / "n.yaml", search=SEARCH | {"tune": None}))
    assert protocol_splits(no_tune, splits) is None


def voc_study(tmp_path, root, tune):
    data = {
        "kind": "voc",
        "root": str(root),
        "train_split": "train_aug",
        "pseudo_split": "train",
        "val_split": "val",
        "loader_workers": 0,
    }
    return load_study(write_study(tmp_path / "voc.yaml", search=SEARCH | {"tune": tune}, confirm=CONFIRM, data=data))


def test_voc_tune_split_is_carved_out_of_the_pseudo_label_split(tmp_path, voc_root):
    root, _ = voc_root
    study = voc_study(tmp_path, root, {"count": 1})
    splits = load_splits(study.data)
    ps = protocol_splits(study, splits)
    assert len(ps.tune_ids) == 1 and len(ps.report_ids) == len(splits.pseudo) - 1
    assert sorted(ps.tune_ids + ps.report_ids) == sorted(splits.pseudo.ids)
    assert ps.search.train.ids == splits.train.ids  # train_aug holds both parts, as in the paper's protocol
    i = splits.pseudo.ids.index(ps.tune_ids[0])
    assert (ps.search.pseudo.load_mask(0) == splits.pseudo.load_mask(i)).all()
    assert protocol_splits(study, splits).tune_ids == ps.tune_ids


def test_voc_named_tune_split_overlapping_the_report_is_refused(tmp_path, voc_root):
    root, _ = voc_root
    study = voc_study(tmp_path, root, {"split": "val"})
    with pytest.raises(StudyError, match=r"^search.tune: \d tune image\(s\) are also in the val split"):
        protocol_splits(study, load_splits(study.data))
    (root / "ImageSets/Segmentation/mine.txt").write_text("2008_000000\n")
    study = voc_study(tmp_path, root, {"split": "mine"})
    with pytest.raises(StudyError, match=r"also in the pseudo-label \(report\) split \(e.g. '2008_000000'\)"):
        protocol_splits(study, load_splits(study.data))


# --- schema ----------------------------------------------------------------------------------

BAD = [
    (
        {"search": SEARCH | {"tune": {"count": 4, "fraction": 0.1}}},
        "search.tune: give exactly one of fraction, count, split (got fraction, count)",
    ),
    ({"search": SEARCH | {"tune": {}}}, "search.tune: give exactly one of fraction, count, split (got none)"),
    ({"search": SEARCH | {"tune": {"fraction": 1.0}}}, "search.tune.fraction: Input should be less than 1"),
    ({"search": SEARCH | {"tune": {"cuont": 3}}}, "search.tune.cuont: unknown key"),
    (
        {"search": SEARCH | {"tune": {"fraction": 0.2}}},
        "search.tune.fraction: synthetic data draws its tune images from their own stream; give count",
    ),
    ({"search": SEARCH | {"tune": {"split": "val"}}}, "search.tune.split: synthetic data draws"),
    ({"search": SEARCH | {"seeds": [1, 1]}}, "search.seeds: seeds must be unique"),
    ({"search": SEARCH | {"seeds": []}}, "search.seeds: List should have at least 1 item"),
    ({"confirm": CONFIRM | {"seeds": [1]}}, "confirm.seeds: List should have at least 2 items"),
    ({"confirm": CONFIRM | {"seeds": [1, 1]}}, "confirm.seeds: seeds must be unique"),
    ({"confirm": CONFIRM | {"top_n": 0}}, "confirm.top_n: Input should be greater than or equal to 1"),
    (
        {"confirm": CONFIRM | {"baseline": "ghost"}},
        "confirm.baseline: 'ghost' is not a variant; variants: vit-pcm, tkp-pcl",
    ),
    ({"confirm": {"top_n": 1, "seeds": [0, 1]}}, "confirm.baseline: Field required"),
    ({"search": SEARCH | {"tune": None}}, "confirm: needs search.tune"),
    ({"search": None}, "confirm: needs a search: block"),
    (
        {"variants": {"vit-pcm": {}, "tkp-pcl": {}, "tkp-pcl-top2": {}}},
        "variants.tkp-pcl-top2: the name is taken by a confirmed configuration",
    ),
]


@pytest.mark.parametrize("top,message", BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_protocol_keys_are_one_line_naming_the_yaml_path(tmp_path, top, message):
    path = write_study(tmp_path / "bad.yaml", None, **({"search": SEARCH, "confirm": CONFIRM} | top))
    with pytest.raises(StudyError) as e:
        load_study(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_bad_confirm_block_exits_2_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = study_file(tmp_path, confirm=CONFIRM | {"baseline": "ghost"})
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "confirm.baseline: 'ghost' is not a variant" in err[0]


def test_search_seeds_default_to_the_search_seed(tmp_path):
    search = {k: v for k, v in SEARCH.items() if k not in ("seeds",)}
    study = load_study(study_file(tmp_path, search=search))
    assert study.search.seeds == [7]
    study = load_study(study_file(tmp_path))
    cfgs = [with_seed(search_config(study, {"pooling.k_ratio": 0.3}), s) for s in study.search.seeds]
    assert [c.train.seed for c in cfgs] == [0, 1] and {c.pooling.k_ratio for c in cfgs} == {0.3}


# --- confirmation jobs -----------------------------------------------------------------------


def result(number: int, value: float, params: dict) -> SimpleNamespace:
    """A finished search trial as the confirmation reads it (an Optuna FrozenTrial fits too)."""
    return SimpleNamespace(number=number, value=value, params=params)


def trials():
    return [
        result(0, 0.40, {"pooling.k_ratio": 0.1, "train.lr": 1e-3}),
        result(1, 0.55, {"pooling.k_ratio": 0.2, "train.lr": 2e-3}),
        result(2, float("nan"), {"pooling.k_ratio": 0.3, "train.lr": 3e-3}),
        result(3, 0.55, {"pooling.k_ratio": 0.4, "train.lr": 4e-3}),  # ties trial 1: the lower number wins
        result(4, 0.50, {"pooling.k_ratio": 0.5, "train.lr": 5e-3}),
    ]


def test_rank_trials_breaks_ties_by_trial_number_and_drops_nan():
    assert [t.number for t in rank_trials(trials(), "maximize")] == [1, 3, 4, 0]
    assert [t.number for t in rank_trials(trials(), "minimize")] == [0, 4, 1, 3]
    frozen = SimpleNamespace(number=9, value=None, params={})
    assert rank_trials([frozen], "maximize") == []


def test_confirmation_jobs_top_n_and_baseline_with_each_seed(tmp_path):
    study = load_study(study_file(tmp_path))
    jobs = confirmation_jobs(study, reversed(trials()))
    assert [j.key for j in jobs[:3]] == [
        "confirm|top1|trial=1|seed=10",
        "confirm|top2|trial=3|seed=10",
        "confirm|vit-pcm|seed=10",
    ]
    assert len(jobs) == 9 and len({j.key for j in jobs}) == 9
    by_key = {j.key: j for j in jobs}
    top1 = by_key["confirm|top1|trial=1|seed=12"]
    assert (top1.variant, top1.seed, top1.confirm_of, top1.rank) == ("tkp-pcl-top1", 12, 1, 1)
    assert (top1.config.pooling.k_ratio, top1.config.train.lr, top1.config.train.seed) == (0.2, 2e-3, 12)
    assert by_key["confirm|top2|trial=3|seed=11"].config.pooling.k_ratio == 0.4
    base = by_key["confirm|vit-pcm|seed=11"]
    expected = variant_config(study, "vit-pcm")
    expected.train.seed = 11
    assert (base.variant, base.confirm_of, base.rank) == ("vit-pcm", None, None)
    assert base.config == expected and base.config_hash != by_key["confirm|vit-pcm|seed=10"].config_hash
    assert {j.seed for j in jobs if j.variant == "vit-pcm"} == {10, 11, 12}
    assert confirmation_jobs(study, reversed(trials())) == jobs  # stable


def test_confirmation_with_fewer_finished_trials_than_top_n(tmp_path):
    study = load_study(study_file(tmp_path))
    jobs = confirmation_jobs(study, [result(5, 0.3, {"pooling.k_ratio": 0.1, "train.lr": 1e-3})])
    assert sorted({j.variant for j in jobs}) == ["tkp-pcl-top1", "vit-pcm"] and len(jobs) == 6
    no_confirm = load_study(study_file(tmp_path, confirm=None))
    assert confirmation_jobs(no_confirm, trials()) == []


# --- stages, for the runner ------------------------------------------------------------------

DIST = {
    "pooling.k_ratio": optuna.distributions.FloatDistribution(0.01, 1.0),
    "train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
}
S = optuna.trial.TrialState


def frozen(number, state, value=None, key=None, k=0.1, **attrs):
    t = optuna.trial.create_trial(
        state=state,
        value=value,
        params={"pooling.k_ratio": k, "train.lr": 1e-3},
        distributions=DIST,
        user_attrs=({"job_key": key or f"search|trial={number}"} | attrs),
    )
    t.number = number
    return t


def test_stage_of_job_keys():
    assert [
        stage_of(k)
        for k in (None, "search|trial=3", "confirm|top1|trial=3|seed=0", "confirm|vit-pcm|seed=1", "tkp|seed=0")
    ] == ["search", "search", "confirm", "confirm", "grid"]


def test_confirmation_is_due_once_the_search_is_spent_and_idle(tmp_path):
    study = load_study(study_file(tmp_path))  # n_trials 3, top_n 2, confirm seeds 10, 11, 12
    assert confirm_total(study) == 9
    two = [frozen(0, S.COMPLETE, 0.5, k=0.1), frozen(1, S.PRUNED, k=0.2)]
    assert not search_spent(study, two) and confirmation_todo(study, two) is None
    running = two + [frozen(2, S.RUNNING, k=0.3)]
    assert search_spent(study, running) and confirmation_todo(study, running) is None  # waits for it
    failed = two + [frozen(2, S.FAIL, k=0.3)]
    assert confirmation_todo(study, failed) is None  # a failed trial does not spend the budget
    spent = two + [frozen(2, S.FAIL, k=0.3), frozen(3, S.COMPLETE, 0.6, k=0.4)]
    todo = confirmation_todo(study, spent)
    assert len(todo) == 9 and todo[0].key == "confirm|top1|trial=3|seed=10"
    # enqueued (waiting) and done ones are not enqueued again; a failed one only when retrying (once per bench run)
    enq = [
        frozen(10 + i, S.WAITING if i else S.FAIL, key=j.key, **{"confirm_of": j.confirm_of})
        for i, j in enumerate(todo[:3])
    ]
    assert [j.key for j in confirmation_todo(study, spent + enq)] == [j.key for j in todo[3:]]
    assert [j.key for j in confirmation_todo(study, spent + enq, retry_failed=True)] == [todo[0].key] + [
        j.key for j in todo[3:]
    ]
    # a search extended after its confirmation would confirm other trials: refused
    better = spent + enq + [frozen(20, S.COMPLETE, 0.9, k=0.9), frozen(21, S.COMPLETE, 0.8, k=0.8)]
    with pytest.raises(StudyError, match=r"^confirm: the study confirmed search trial 3 .* no longer in the top 2"):
        confirmation_todo(study, better)
    assert (
        confirmation_todo(study, [frozen(i, S.PRUNED) for i in range(3)]) == []
    )  # nothing finished: nothing to confirm
    assert confirmation_todo(load_study(study_file(tmp_path, confirm=None)), spent) is None


def test_confirm_attrs_and_tags(tmp_path):
    study = load_study(study_file(tmp_path))
    top, base = [j for j in confirmation_jobs(study, trials()) if j.seed == 10][::2]
    attrs = trial_attrs(top, study)
    assert attrs["stage"] == "confirm" and attrs["confirm_of"] == 1 and attrs["confirm_rank"] == 1
    assert attrs["config_hash"] == top.config_hash and '"k_ratio":0.2' in attrs["config"].replace(" ", "")
    ctx = SimpleNamespace(study=study)
    tags = run_tags(ctx, SimpleNamespace(number=3), top)
    assert {k: tags[k] for k in tags if "stage" in k or "confirm" in k} == {
        "bench.stage": "confirm",
        "bench.confirm_of": 1,
        "bench.confirm_rank": 1,
    }
    tags = run_tags(ctx, SimpleNamespace(number=4), base)
    assert (
        tags["bench.stage"] == "confirm"
        and "bench.confirm_of" not in tags
        and "confirm_of" not in trial_attrs(base, study)
    )


def test_seed_values_mean_and_per_seed():
    per = {
        0: {"pseudo_miou": 0.4, "pseudo_miou_crf": 0.5, "train_seconds": 10.0},
        1: {"pseudo_miou": 0.6, "pseudo_miou_crf": 0.7, "train_seconds": 12.0},
    }
    out = seed_values(per, "pseudo_miou", "tune_")
    assert out == pytest.approx(
        {
            "tune_pseudo_miou": 0.5,
            "tune_pseudo_miou_crf": 0.6,
            "tune_train_seconds": 11.0,
            "tune_pseudo_miou_seed0": 0.4,
            "tune_pseudo_miou_seed1": 0.6,
            "tune_pseudo_miou_crf_seed0": 0.5,
            "tune_pseudo_miou_crf_seed1": 0.7,
        }
    )
    assert seed_values({3: per[0]}, "pseudo_miou", "") == per[0]  # one seed, no tune split: as before


def test_plan_rows_name_the_tune_split_and_the_confirmation(tmp_path):
    rows = dict(plan_rows(load_study(study_file(tmp_path))))
    assert rows["tune split"] == "8 scenes of the synthetic 'tune' stream" and rows["search seeds"].startswith("0, 1")
    assert rows["then: confirm"].startswith(
        "9 runs after the search: tkp-pcl-top1..top2 and vit-pcm x seeds 10, 11, 12"
    )
    assert "confirm" not in " ".join(dict(plan_rows(load_study(study_file(tmp_path, confirm=None)))))


def test_a_changed_tune_split_or_search_seeds_is_named(tmp_path):
    from bench.study.identity import protocol_difference, protocol_json

    study = load_study(study_file(tmp_path))
    stored = protocol_json(study)
    assert protocol_difference(study, stored) is None
    other = load_study(study_file(tmp_path, search=SEARCH | {"tune": {"count": 4}}))
    assert protocol_difference(other, stored) == 'search.tune: {"count": 4} here, {"count": 8} in'
    other = load_study(study_file(tmp_path, search=SEARCH | {"seeds": [0]}))
    assert protocol_difference(other, stored) == "search.seeds: [0] here, [0, 1] in"
