"""The protocol card: a study's resolved configuration beside ViT-PCM's published protocol.

:func:`protocol_card` is a pure function of the runs DataFrame (``mlflow.search_runs``: columns
``params.<dotted key>`` hold each run's fully resolved configuration as strings, the variant is
its variant tag or, after :func:`bench.report.runs.load_runs`, ``variant``). One row per
protocol element: ViT-PCM's value (its paper and official code), this
study's value (per variant where variants differ) and a mark where the study departs from it.
A key the runs did not record (an older run, before the option existed) reads
``n/a (not recorded)`` and is marked ``not recorded``, never guessed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from ..records import Tag, split_size_tag, split_tag

NOT_RECORDED = "n/a (not recorded)"
PUBLISHED = "ViT-PCM (published)"
STUDY = "this study"
MARK = "mark"
DIFFERS = "differs"


class _Missing(Exception):
    """A configuration key the run did not record."""


@dataclass
class Cell:
    """One run's value of an element: its text and whether it departs from the published value
    (None: cannot tell, a key it depends on was not recorded)."""

    text: str
    differs: bool | None


def _any(*conds: bool | None) -> bool | None:
    """True if any condition is True; else None if any is unknown; else False."""
    return True if any(c is True for c in conds) else (None if any(c is None for c in conds) else False)


class Params:
    """The ``params.*`` of one run. ``get`` raises :class:`_Missing` for an unrecorded key and
    returns None for a recorded ``None``."""

    def __init__(self, row: pd.Series):
        self.row = row

    def get(self, key: str) -> str | None:
        v = self.row.get(f"params.{key}")
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise _Missing(key)
        return None if v == "None" else str(v)

    def opt(self, key: str) -> str | None:
        """Like ``get``, but an unrecorded key reads ``n/a (not recorded)``."""
        try:
            return self.get(key)
        except _Missing:
            return NOT_RECORDED

    def num(self, key: str) -> float | None:
        v = self.get(key)
        return None if v is None else float(v)

    def flag(self, key: str) -> bool:
        return self.get(key) == "True"

    def tag(self, key: str) -> str | None:
        """The run's tag ``key`` (None where it has none)."""
        v = self.row.get(f"tags.{key}")
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _g(x: float | None) -> str:
    return "none" if x is None else f"{x:g}"


def backbone(p: Params) -> Cell:
    name, file = p.get("model.backbone"), p.opt("model.pretrained_file")
    file = None if file == NOT_RECORDED else file  # runs from before the option had no file
    shape = [
        f"{k}={p.get(f'model.{k}')}" for k in ("depth", "embed_dim", "patch_size") if p.get(f"model.{k}") is not None
    ]
    weights = (
        f"weights from file {file}"
        if file
        else ("timm pretrained weights" if p.flag("model.pretrained") else "trained from scratch")
    )
    text = f"{name}{' (' + ', '.join(shape) + ')' if shape else ''}, {weights}"
    same_shape = all(
        p.get(f"model.{k}") in (None, v) for k, v in (("depth", "12"), ("embed_dim", "768"), ("patch_size", "16"))
    )
    return Cell(text, not (name == "vit_base_patch16_384" and same_shape and (file or p.flag("model.pretrained"))))


def _patch(p: Params) -> int | None:
    """The patch size: the configured one, else the one in a timm name (``..._patch16_...``)."""
    if p.get("model.patch_size") is not None:
        return int(p.num("model.patch_size"))
    m = re.search(r"patch(\d+)", p.get("model.backbone") or "")
    return int(m.group(1)) if m else None


def _px(size: int, patch: int | None) -> str:
    return f"{size} px" + (f" ({size // patch}x{size // patch} patches)" if patch else "")


def train_size(p: Params) -> Cell:
    size = int(p.num("model.img_size"))
    return Cell(_px(size, _patch(p)), size != 384)


def inference_size(p: Params) -> Cell:
    """Compared as a multiple of the train size (ViT-PCM: 960 / 384 = 2.5x)."""
    train = int(p.num("model.img_size"))
    size = int(p.num("pseudo.input_size") or train)
    return Cell(f"{_px(size, _patch(p))}, {size / train:g}x the train size", size * 2 != train * 5)


EQ_FORMS = {"flip": "same-scale horizontal flip", "vitpcm": "ViT-PCM scale/crop (2x2 mosaic, flips, transpose, crop)"}


def equivariance(p: Params) -> Cell:
    w = p.num("loss.eq_weight")
    if w == 0:
        return Cell("off (eq_weight 0)", True)
    form = p.opt("loss.eq_form")
    return Cell(
        f"{EQ_FORMS.get(form, form)}, weight {_g(w)}", _any(None if form == NOT_RECORDED else form != "vitpcm", w != 1)
    )


def optimizer(p: Params) -> Cell:
    opt, lr = p.opt("train.optimizer"), p.num("train.lr")
    name = {"adam": "Adam", "adamw": "AdamW"}.get(opt, opt)
    text = f"{name}, lr {_g(lr)}, {p.get('train.schedule')} schedule, weight decay {_g(p.num('train.weight_decay'))}"
    return Cell(text, _any(None if opt == NOT_RECORDED else opt != "adam", lr != 1e-4))


def frozen_warmup(p: Params) -> Cell:
    n = int(p.num("train.frozen_epochs") or 0)
    return Cell(f"{n} epoch(s)" if n else "none", n != 1)


def blocks_trained(p: Params) -> Cell:
    n = p.get("train.trainable_blocks")
    return Cell(f"last {n}" if n is not None else "all", n != "5")


def classifier_l2(p: Params) -> Cell:
    w = p.num("loss.cls_l2") or 0.0
    return Cell(f"L2 {w:g} on the classifier weights (loss term)" if w else "none", w != 0.01)


def conditioning(p: Params) -> Cell:
    if not p.flag("model.hv_bilstm"):
        return Cell("none (HV-BiLSTM off)", True)
    return Cell(f"HV-BiLSTM, hidden {p.get('model.lstm_hidden')}", p.get("model.lstm_hidden") != "192")


def pooling(p: Params) -> Cell:
    kind = p.get("pooling.kind")
    detail = {
        "topk": lambda: f" k={p.get('pooling.k')}" if p.get("pooling.k") else f" k_ratio={p.get('pooling.k_ratio')}",
        "lse": lambda: f" r={p.get('pooling.lse_r')}",
    }.get(kind, lambda: "")()
    return Cell(f"{kind}{detail}", kind != "max" and not (kind == "topk" and p.get("pooling.k") == "1"))


def pce(p: Params) -> Cell:
    w = p.num("loss.pce_weight")
    return Cell(f"{p.get('loss.pce_form')}, weight {w:g}" if w else "none", bool(w))


CRF_PUBLISHED = {
    "gaussian_sxy": 1,
    "gaussian_compat": 3,
    "bilateral_sxy": 67,
    "bilateral_srgb": 3,
    "bilateral_compat": 4,
    "iterations": 10,
}


def crf(p: Params) -> Cell:
    if not p.flag("pseudo.crf.enabled"):
        return Cell("off", True)
    vals = {k: p.num(f"pseudo.crf.{k}") for k in CRF_PUBLISHED}
    return Cell(_crf_text(vals), any(vals[k] != v for k, v in CRF_PUBLISHED.items()))


def _crf_text(v: dict[str, float]) -> str:
    return (
        f"dense CRF: Gaussian sxy {v['gaussian_sxy']:g} compat {v['gaussian_compat']:g}; bilateral sxy "
        f"{v['bilateral_sxy']:g} srgb {v['bilateral_srgb']:g} compat {v['bilateral_compat']:g}; {v['iterations']:g} iterations"
    )


def precision(p: Params) -> Cell:
    """What stage 1 computed in (the run's tag: ``train.amp`` on the device it ran on)."""
    v = p.tag(Tag.PRECISION)
    if v is None:
        raise _Missing(Tag.PRECISION)
    return Cell(v, v != "float32")


def epochs(p: Params) -> Cell:
    n = int(p.num("train.epochs"))
    return Cell(str(n), n != 80)


def batch_size(p: Params) -> Cell:
    n = int(p.num("train.batch_size"))
    return Cell(str(n), n != 64)


#: ViT-PCM's splits per data set: (stage-1 training, pseudo labels scored, segmentation scored)
SPLITS = {"voc": ("train_aug", "train", "val"), "coco": ("train2014", "val2014", "val2014")}


#: the roles of a trial's splits shown here (:data:`bench.records.SPLIT_ROLES`), by column of SPLITS
CARD_ROLES = ("train", "pseudo", "val")


def _split(p: Params, key: str, which: int) -> Cell:
    kind = p.get("data.kind")
    used, n = p.tag(split_tag(CARD_ROLES[which])), p.tag(split_size_tag(CARD_ROLES[which]))
    if used is not None:  # what the trial itself says it read (a search's tune split, its report part, ...)
        published = f"{kind}-{SPLITS[kind][which]}" if kind in SPLITS else None
        return Cell(
            f"{used} ({int(n):,} images)" if n else used,
            used != published or p.opt("data.max_images") not in (None, NOT_RECORDED),
        )
    if kind == "synthetic":
        stream = "val" if which == 2 else "train"  # pseudo labels are made on the train scenes
        return Cell(f"synthetic {stream} scenes ({p.get(f'data.n_{stream}')} images)", True)
    split = p.get(f"data.{key}")
    cap = p.opt("data.max_images")
    cap = None if cap == NOT_RECORDED else cap
    text = f"{kind} {split}" + (f" (first {cap} images)" if cap else "")
    return Cell(text, kind not in SPLITS or split != SPLITS[kind][which] or cap is not None)


def stage2(p: Params) -> Cell:
    if not p.flag("segment.enabled"):
        return Cell("off", True)
    model, opt, split = p.get("segment.model"), p.opt("segment.optimizer"), p.opt("segment.train_split")
    text = f"{model}, {opt}, trained on {split}"
    train = SPLITS.get(p.get("data.kind"), ("",))[0]
    return Cell(
        text,
        _any(
            not ("deeplabv2" in model and "101" in model),
            None if opt == NOT_RECORDED else opt != "sgd",
            None if split == NOT_RECORDED else split != train,
        ),
    )


#: (element, ViT-PCM's published value, the study's value of one run)
ELEMENTS: list[tuple[str, str, Callable[[Params], Cell]]] = [
    ("backbone and weights", "ViT-B/16 (vit_base_patch16_384), ImageNet-21k then 1k weights", backbone),
    ("train size", "384 px (24x24 patches)", train_size),
    ("inference size (pseudo labels)", "960 px (60x60 patches), 2.5x the train size", inference_size),
    ("equivariance", "ViT-PCM scale/crop (2x2 mosaic, flips, transpose, crop), weight 1", equivariance),
    ("optimizer", "Adam, lr 1e-4 after the warm-up", optimizer),
    ("backbone-frozen warm-up", "1 epoch (lr 1e-3)", frozen_warmup),
    ("blocks trained", "last 5", blocks_trained),
    ("classifier regulariser", "L2 0.01 on the classifier weights (loss term)", classifier_l2),
    ("patch conditioning", "HV-BiLSTM, hidden 192", conditioning),
    ("pooling", "max", pooling),
    ("PCE", "none", pce),
    ("CRF", _crf_text(CRF_PUBLISHED), crf),
    ("precision (stage 1)", "float32 (the official code sets no mixed precision)", precision),
    ("epochs", "80 (upper bound)", epochs),
    ("batch size", "64 (16 per GPU, 4 GPUs)", batch_size),
    ("split trained on", "voc train_aug (10,582 images)", lambda p: _split(p, "train_split", 0)),
    ("split scored (pseudo labels)", "voc train (1,464 images)", lambda p: _split(p, "pseudo_split", 1)),
    ("split scored (segmentation)", "voc val (1,449 images)", lambda p: _split(p, "val_split", 2)),
    ("stage-2 network", "DeepLab-v2 ResNet-101, SGD, trained on train_aug pseudo masks", stage2),
]


def _cell(fn: Callable[[Params], Cell], p: Params) -> Cell | None:
    try:
        return fn(p)
    except _Missing:
        return None


def _variants(runs: pd.DataFrame) -> pd.Series:
    col = "variant" if "variant" in runs else f"tags.{Tag.VARIANT}"
    return runs[col].fillna("?").astype(str) if col in runs else pd.Series("?", index=runs.index)


def protocol_card(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per protocol element (index ``element``), columns ``ViT-PCM (published)``,
    ``this study`` and ``mark`` (``differs: <variants>``, ``not recorded`` or empty).

    The study's value is written once when every run agrees, else per variant
    (``vit-pcm: max; tkp-pcl: topk k_ratio=0.1``; a variant whose runs differ, e.g. over a grid,
    lists its values joined by `` / ``)."""
    variants = _variants(runs)
    order = list(pd.unique(variants))
    params = [Params(row) for _, row in runs.iterrows()]
    rows = []
    for element, published, fn in ELEMENTS:
        per: dict[str, list[Cell | None]] = {v: [] for v in order}
        for p, v in zip(params, variants):
            c = _cell(fn, p)
            if c is None or c not in per[v]:
                per[v].append(c)
        texts = {v: " / ".join(c.text if c else NOT_RECORDED for c in cells) for v, cells in per.items()}
        study = (
            next(iter(texts.values()))
            if len(set(texts.values())) == 1
            else "; ".join(f"{v}: {t}" for v, t in texts.items())
        )
        differ = [v for v, cells in per.items() if any(c is not None and c.differs for c in cells)]
        unknown = any(c is None or c.differs is None for cells in per.values() for c in cells)
        mark = (
            (f"{DIFFERS}: " + ("all" if len(differ) == len(order) > 1 else ", ".join(differ)))
            if differ
            else ("not recorded" if unknown else "")
        )
        rows.append({"element": element, PUBLISHED: published, STUDY: study, MARK: mark})
    return pd.DataFrame(rows).set_index("element")


def differing(card: pd.DataFrame, variant: str | None = None) -> list[str]:
    """Elements marked as differing (for ``variant``: those where it differs)."""
    marks = card[MARK].astype(str)
    hit = marks.str.startswith(DIFFERS)
    if variant is not None:
        hit &= marks.map(lambda m: m == f"{DIFFERS}: all" or variant in m.removeprefix(f"{DIFFERS}: ").split(", "))
    return list(card.index[hit])


def protocol_sentence(card: pd.DataFrame, baseline: str | None) -> str:
    """How many elements differ from ViT-PCM's published protocol, in all and for the baseline."""
    n, d = len(card), differing(card)
    text = f"{len(d)} of {n} protocol elements differ from ViT-PCM's published protocol in at least one variant"
    if baseline:
        b = differing(card, baseline)
        text += f"; {len(b)} for the baseline {baseline} itself" + (f" ({', '.join(b)})" if b else "")
    unknown = int((card[MARK] == "not recorded").sum())
    if unknown:
        text += f"; {unknown} not recorded by these runs"
    return text + "."
