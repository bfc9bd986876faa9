"""Multi-GPU (or multi-process CPU) training of each trial with DistributedDataParallel.

    torchrun --standalone --nproc-per-node N -m bench.train_trial STUDY [--tracking-uri URI] [--storage URL]

A worker like ``bench worker``, except that all N processes train every trial together: rank 0
opens the study (creating and enqueueing it if needed), claims trials and does all Optuna and
MLflow work, pseudo labels and stage 2; it sends the configuration of each stage-1 training
(one per seed of a search trial) to the other ranks, which only join stage-1 training. Backend: NCCL on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

import torch
import torch.distributed as dist

from tkp_pcl.data import load_splits
from tkp_pcl.stage1 import train_stage1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.train_trial")
    ap.add_argument("study")
    ap.add_argument("--tracking-uri")
    ap.add_argument("--storage")
    ap.add_argument("--threads", type=int)
    ap.set_defaults(command="run")  # validated as `bench run` validates (bench.cli._validate)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=dt.timedelta(hours=3))
    rank = dist.get_rank()
    try:
        return rank_zero(args) if rank == 0 else other_rank(args)
    finally:
        dist.destroy_process_group()


def _broadcast(obj):
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_zero(args) -> int:
    """Rank 0: the study, its trials, tracking; on any error (a refused study file, data that
    does not load, a failing store) the other ranks are told to stop, then the error is
    reported in one line as `bench` reports it."""
    from .cli import _input_error_types
    from .tracking import TrackingStoreError

    told = [False]

    def stop_others() -> None:
        if not told[0]:
            told[0] = True
            _broadcast(None)

    try:
        return _run_rank_zero(args, stop_others)
    except (*_input_error_types(), TrackingStoreError) as e:
        stop_others()
        print(f"bench: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, TrackingStoreError) else 2
    except BaseException:
        stop_others()
        raise


def _run_rank_zero(args, stop_others) -> int:
    from . import runner
    from .cli import _check_data, _load
    from .storage import heartbeat
    from .trial import TrialContext, run_trial

    study, storage_url, tracking_uri = _load(args)
    splits, protocol = _check_data(study, args.study)
    h = runner.open_study(study, storage_url, tracking_uri, create=True)
    runner.check(h, args.study)
    ctx = TrialContext(study, h.optuna_study, h.tracker, h.tracker.open(), h.workdir, _splits=splits, _protocol=protocol,
                       before_stage1=lambda cfg, ckpt: _broadcast((cfg.model_dump(mode="json"), str(ckpt))))  # fmt: skip
    runner.prepare(h, args.study)
    failed = 0
    while (trial := runner.next_trial(h)) is not None:
        with heartbeat(h.storage, h.optuna_study, trial):
            failed += run_trial(ctx, trial).name == "FAIL"
    stop_others()
    runner.finish_parent(h)
    return 1 if failed else 0


def other_rank(args) -> int:
    from tkp_pcl.config import MethodConfig

    from .study import load_study

    from .search_protocol import protocol_splits

    study = load_study(args.study)
    splits = load_splits(study.data)
    protocol = protocol_splits(study, splits)  # with a tune split every trial trains on the same (joined) images
    splits = protocol.report if protocol is not None else splits
    while (msg := _broadcast(None)) is not None:
        cfg, ckpt = MethodConfig.model_validate(msg[0]), msg[1]
        try:
            train_stage1(cfg, splits, checkpoint_path=ckpt, progress=False)
        except Exception as e:  # rank 0 records the failure; this rank waits for the next trial
            print(f"rank {dist.get_rank()}: {type(e).__name__}: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
