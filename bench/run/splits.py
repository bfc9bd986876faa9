"""The tune split a search scores, kept apart from the images the report scores.

- Synthetic data: ``search.tune.count`` scenes of their own stream (``tune_00000``, ...), which
  cannot collide with the train stream's ids. File data (VOC): ``count`` or ``fraction`` of the
  pseudo-label split (the training images with masks), chosen by ``search.seed``, or a named
  ``split``. Every trial of the study trains stage 1 on the same images (for synthetic data, the
  train stream plus the tune stream, as VOC's train_aug holds both parts of its train split); only
  whose *masks* are read differs: the tune images' in search trials, the report images' in
  confirmation runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tkp_pcl.config import SyntheticDataConfig
from tkp_pcl.data import Split, Splits, synthetic_kwargs, synthetic_split, voc_split

from ..study import Study, StudyError

TUNE_IDS_FILE = "tune_ids.txt"
REPORT_IDS_FILE = "report_ids.txt"


def tune_indices(
    ids: Sequence[str], seed: int, count: int | None = None, fraction: float | None = None
) -> tuple[list[int], list[int]]:
    """Choose the tune images among ``ids``: the ``count`` (or ``max(1, round(fraction * n))``)
    ids with the smallest ``sha256(f"{seed}:{id}")``. Deterministic, independent of the order of
    ``ids`` and of numpy's generators. Returns (tune indices, report indices), both in the order
    of ``ids``; at least one image is left to report on."""
    n = len(ids)
    if (count is None) == (fraction is None):
        raise ValueError("give exactly one of count, fraction")
    k = count if count is not None else max(1, round(fraction * n))
    key = "count" if count is not None else "fraction"
    if k >= n:
        raise StudyError(
            f"search.tune.{key}: {k} tune images would leave none of the {n} pseudo-label images to report on"
        )
    rank = sorted(range(n), key=lambda i: (hashlib.sha256(f"{seed}:{ids[i]}".encode()).digest(), i))
    tune = set(rank[:k])
    return sorted(tune), [i for i in range(n) if i not in tune]


def check_disjoint(tune_ids: Sequence[str], others: Mapping[str, Sequence[str]], where: str = "search.tune") -> None:
    """Refuse (one line) tune images that are also in one of ``others`` (name -> ids)."""
    tune = set(tune_ids)
    for name, ids in others.items():
        both = [i for i in ids if i in tune]
        if both:
            raise StudyError(
                f"{where}: {len(both)} tune image(s) are also in the {name} split (e.g. {both[0]!r}); "
                "the images a search scores must be disjoint from the reported ones"
            )


def concat_splits(name: str, first: Split, second: Split) -> Split:
    """The images of ``first`` then those of ``second`` (same classes) as one split."""
    if first.class_names != second.class_names:
        raise ValueError(f"{name}: cannot join splits with different classes")
    n = len(first)

    def pick(j: int, fa, fb):
        return fa(j) if j < n else fb(j - n)

    return Split(
        name,
        first.class_names,
        [*first.ids, *second.ids],
        lambda j: pick(j, first.load_image, second.load_image),
        lambda j: pick(j, first.load_mask, second.load_mask),
    )


@dataclass
class TuneSplits:
    """``search``: the splits of a search trial (masks read: the tune images only, as its
    pseudo-label and monitor split); ``report``: those of a confirmation run (pseudo labels scored
    on the report images; monitor and segmentation on val, as in grid jobs)."""

    search: Splits
    report: Splits

    @property
    def tune_ids(self) -> list[str]:
        return list(self.search.pseudo.ids)

    @property
    def report_ids(self) -> list[str]:
        return list(self.report.pseudo.ids)

    def write_ids(self, folder: Path) -> list[Path]:
        """``tune_ids.txt`` and ``report_ids.txt`` (one id a line) under ``folder``."""
        out = []
        for fname, ids in ((TUNE_IDS_FILE, self.tune_ids), (REPORT_IDS_FILE, self.report_ids)):
            path = Path(folder) / fname
            path.write_text("".join(f"{i}\n" for i in ids))
            out.append(path)
        return out


def tune_splits(study: Study, splits: Splits) -> TuneSplits | None:
    """The search and report splits of a study with ``search.tune`` (None without one), built
    from the study's usual ``splits``. Raises :class:`StudyError` if tune and report overlap."""
    tune = study.search.tune if study.search is not None else None
    if tune is None:
        return None
    data, train, report_pseudo = study.data, splits.train, splits.pseudo
    if isinstance(data, SyntheticDataConfig):
        tune_split = synthetic_split("tune", tune.count, **synthetic_kwargs(data))
        train = concat_splits(f"{splits.train.name}+tune", splits.train, tune_split)
    elif tune.split is not None:
        tune_split = voc_split(data.root, tune.split, mask_dir=data.mask_dir, max_images=data.max_images)
    else:
        t_idx, r_idx = tune_indices(splits.pseudo.ids, study.search.seed, tune.count, tune.fraction)
        tune_split = dataclasses.replace(splits.pseudo.subset(t_idx), name=f"{splits.pseudo.name} (tune)")
        report_pseudo = dataclasses.replace(splits.pseudo.subset(r_idx), name=f"{splits.pseudo.name} (report)")
    check_disjoint(tune_split.ids, {"pseudo-label (report)": report_pseudo.ids, "val": splits.val.ids})
    search = dataclasses.replace(splits, train=train, pseudo=tune_split, val=tune_split)
    seg_train = getattr(splits, "seg_train", None)
    if seg_train is not None:  # stage 2 of a search trial is scored on the tune images: never trained on them
        tune_set = set(tune_split.ids)
        search.seg_train = seg_train.subset([i for i, x in enumerate(seg_train.ids) if x not in tune_set])
    return TuneSplits(search=search, report=dataclasses.replace(splits, train=train, pseudo=report_pseudo))
