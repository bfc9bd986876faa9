"""The protocol card (bench.report.protocol_card) on hand-made runs DataFrames shaped like mlflow.search_runs."""

import pandas as pd

from bench.report.blocks import Table, render_latex
from bench.report.protocol_card import MARK, NOT_RECORDED, PUBLISHED, STUDY, protocol_card, protocol_sentence
from bench.study import flatten, merge
from tkp_pcl.config import MethodConfig

VOC = {
    "kind": "voc",
    "root": "/data/VOC2012",
    "train_split": "train_aug",
    "pseudo_split": "train",
    "val_split": "val",
    "mask_dir": "auto",
    "max_images": None,
    "loader_workers": 8,
}
#: ViT-PCM's published protocol as a configuration (keys B and E add included, as strings)
FAITHFUL = {
    "model": {
        "backbone": "vit_base_patch16_384",
        "pretrained": True,
        "img_size": 384,
        "patch_size": None,
        "depth": None,
        "embed_dim": None,
        "num_heads": None,
        "hv_bilstm": True,
        "lstm_hidden": 192,
    },
    "pooling": {"kind": "max"},
    "loss": {"pce_weight": 0.0, "eq_weight": 1.0},
    "train": {"epochs": 80, "batch_size": 64, "lr": 1e-4, "weight_decay": 0.0},
    "pseudo": {"input_size": 960},
    "segment": {"enabled": True},
}
NEW_KEYS = {
    "loss.eq_form": "vitpcm",
    "train.optimizer": "adam",
    "train.frozen_epochs": 1,
    "train.trainable_blocks": 5,
    "loss.cls_l2": 0.01,
    "segment.model": "deeplabv2_resnet101",
    "segment.optimizer": "sgd",
    "segment.train_split": "train_aug",
}


def run(
    variant: str,
    changes: dict | None = None,
    new_keys: dict | None = NEW_KEYS,
    data: dict = VOC,
    precision: str | None = "float32",
) -> dict:
    """One row as mlflow.search_runs gives it: ``params.<dotted key>`` strings, the variant and
    precision tags (no precision tag: a run from before it was recorded)."""
    raw = merge(FAITHFUL, changes or {})
    cfg = MethodConfig.model_validate(raw).model_dump(mode="json")
    params = {**{f"data.{k}": v for k, v in data.items()}, **flatten(cfg), **(new_keys or {})}
    return {
        "run_id": f"r{variant}",
        "tags.bench.variant": variant,
        **({"tags.bench.precision": precision} if precision else {}),
        **{f"params.{k}": str(v) for k, v in params.items()},
    }


def test_faithful_study_differs_nowhere():
    card = protocol_card(pd.DataFrame([run("vit-pcm"), run("vit-pcm")]))
    assert list(card.columns) == [PUBLISHED, STUDY, MARK]
    assert card.index.name == "element" and len(card) == 19
    assert (card[MARK] == "").all(), card[card[MARK] != ""]
    assert card.loc["inference size (pseudo labels)", STUDY] == "960 px (60x60 patches), 2.5x the train size"
    assert card.loc["backbone and weights", STUDY] == "vit_base_patch16_384, timm pretrained weights"
    assert protocol_sentence(card, "vit-pcm").startswith("0 of 19 protocol elements differ")


def test_variants_that_differ_are_listed_per_variant():
    runs = pd.DataFrame(
        [
            run("vit-pcm"),
            run("vit-pcm", new_keys={**NEW_KEYS, "loss.eq_form": "flip"}),  # a grid over eq_form
            run("tkp-pcl", {"pooling.kind": "topk", "pooling.k_ratio": 0.1, "loss.pce_weight": 0.1}),
            run(
                "tkp-pcl",
                {
                    "pooling.kind": "topk",
                    "pooling.k_ratio": 0.1,
                    "loss.pce_weight": 0.1,
                    "model.pretrained_file": "/shared/vit_b16_384.safetensors",
                },
            ),
        ]
    )
    card = protocol_card(runs)
    assert card.loc["pooling", STUDY] == "vit-pcm: max; tkp-pcl: topk k_ratio=0.1"
    assert card.loc["pooling", MARK] == "differs: tkp-pcl"
    assert card.loc["PCE", MARK] == "differs: tkp-pcl"
    eq = card.loc["equivariance", STUDY]
    assert eq.startswith("vit-pcm: ViT-PCM scale/crop") and " / same-scale horizontal flip, weight 1" in eq
    assert card.loc["equivariance", MARK] == "differs: vit-pcm"
    assert "weights from file /shared/vit_b16_384.safetensors" in card.loc["backbone and weights", STUDY]
    assert card.loc["backbone and weights", MARK] == ""  # a file of the published weights
    assert card.loc["train size", STUDY] == "384 px (24x24 patches)"  # patch size from the timm name
    sentence = protocol_sentence(card, "vit-pcm")
    assert (
        sentence.startswith("3 of 19 protocol elements differ")
        and "1 for the baseline vit-pcm itself (equivariance)" in sentence
    )


def test_a_cpu_study_of_today_marks_what_differs_and_what_was_not_recorded():
    """Runs logged before the schedule/equivariance/stage-2 keys existed: never guessed."""
    small = {
        "model.backbone": "vit_tiny_patch16_224",
        "model.pretrained": False,
        "model.img_size": 48,
        "model.patch_size": 8,
        "model.depth": 2,
        "model.embed_dim": 64,
        "model.num_heads": 2,
        "model.hv_bilstm": False,
        "pseudo.input_size": 120,
        "train.epochs": 2,
        "train.batch_size": 32,
        "train.lr": 0.002,
        "segment.model": "vit_decoder",
    }
    syn = {"kind": "synthetic", "seed": 0, "n_train": 96, "n_val": 32, "size": 48}
    runs = pd.DataFrame([run("vit-pcm", small, new_keys=None, data=syn, precision=None)]).rename(
        columns={"tags.bench.variant": "variant"}
    )
    before = ["params.model.pretrained_file", *(f"params.{k}" for k in NEW_KEYS)]  # runs from before these options
    runs = runs.drop(columns=[c for c in before if c in runs])
    card = protocol_card(runs)
    assert card.loc["backbone-frozen warm-up", STUDY] == NOT_RECORDED
    assert card.loc["backbone-frozen warm-up", MARK] == "not recorded"
    assert card.loc["precision (stage 1)", STUDY] == NOT_RECORDED
    assert (
        card.loc["equivariance", STUDY] == f"{NOT_RECORDED}, weight 1"
        and card.loc["equivariance", MARK] == "not recorded"
    )
    assert card.loc["optimizer", MARK] == "differs: vit-pcm"  # known lr 2e-3 (the smoke default), optimizer unknown
    assert card.loc["inference size (pseudo labels)", STUDY] == "120 px (15x15 patches), 2.5x the train size"
    assert card.loc["inference size (pseudo labels)", MARK] == ""  # the published ratio
    assert card.loc["train size", MARK] == "differs: vit-pcm"
    assert (
        card.loc["split trained on", STUDY]
        == card.loc["split scored (pseudo labels)", STUDY]
        == "synthetic train scenes (96 images)"
    )
    assert card.loc["split scored (segmentation)", STUDY] == "synthetic val scenes (32 images)"
    assert (
        card.loc["backbone and weights", STUDY]
        == "vit_tiny_patch16_224 (depth=2, embed_dim=64, patch_size=8), trained from scratch"
    )
    s = protocol_sentence(card, "vit-pcm")
    assert "not recorded by these runs" in s
    tex = render_latex(Table(card, "Protocol", name="protocol"), "tab:p")
    assert r"\toprule" in tex and r"vit\_tiny\_patch16\_224" in tex and "n/a (not recorded)" in tex


def test_the_splits_a_trial_says_it_read_win_over_its_configuration():
    """A search with a tune split carved out of VOC train: its runs' ``bench.split.*`` tags say a
    search trial scored the tune part and a confirmation the report part, not "voc train"."""

    def tagged(variant, pseudo, n):
        return {
            **run(variant),
            "tags.bench.split.train": "voc-train_aug",
            "tags.bench.split.train_images": "10582",
            "tags.bench.split.pseudo": pseudo,
            "tags.bench.split.pseudo_images": n,
        }

    card = protocol_card(
        pd.DataFrame(
            [
                tagged("vit-pcm", "voc-train", "1464"),
                tagged("tkp-pcl", "voc-train (report)", "1264"),
                tagged("tkp-pcl", "voc-train (tune)", "200"),
            ]
        )
    )
    assert (
        card.loc["split trained on", STUDY] == "voc-train_aug (10,582 images)"
        and card.loc["split trained on", MARK] == ""
    )
    assert card.loc["split scored (pseudo labels)", STUDY] == (
        "vit-pcm: voc-train (1,464 images); tkp-pcl: voc-train (report) (1,264 images) / voc-train (tune) (200 images)"
    )
    assert card.loc["split scored (pseudo labels)", MARK] == "differs: tkp-pcl"
    assert card.loc["split scored (segmentation)", STUDY] == "voc val"  # no tag: from the configuration


def test_a_run_in_bf16_departs_from_the_float32_of_the_official_code():
    card = protocol_card(pd.DataFrame([run("vit-pcm"), run("tkp-pcl", precision="bf16")]))
    assert card.loc["precision (stage 1)", STUDY] == "vit-pcm: float32; tkp-pcl: bf16"
    assert card.loc["precision (stage 1)", MARK] == "differs: tkp-pcl"
