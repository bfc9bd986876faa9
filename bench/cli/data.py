"""``bench data``: prepare data sets (COCO's class-id masks)."""

from __future__ import annotations

import sys

from .exits import EXIT_FAILED_TRIALS


def cmd_data(args) -> int:
    from tkp_pcl.data.coco_convert import write_coco_masks
    from tkp_pcl.data.errors import DataWriteError

    try:
        s = write_coco_masks(
            args.instances,
            args.out,
            min_side=args.min_side,
            warn=lambda m: print(f"bench: warning: {m}", file=sys.stderr),
        )
    except DataWriteError as e:  # a full disk: a fault (exit 1), the same command works once it is fixed
        print(f"bench: error: {e}; run the same command again once it is fixed", file=sys.stderr)
        return EXIT_FAILED_TRIALS
    replaced = f" (replacing the {s.replaced} masks it held)" if s.replaced else ""
    print(
        f"{s.written} masks written to {args.out}{replaced}; left out: {s.too_small} smaller than "
        f"{args.min_side} px on a side, {s.empty} without object pixels; skipped: {s.short_polygons} "
        "polygons of fewer than 3 points (they cover no pixel)"
    )
    return 0
