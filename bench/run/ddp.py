"""Multi-GPU (or multi-process CPU) training of each trial with DistributedDataParallel.

    torchrun --standalone --nproc-per-node N -m bench.run.ddp STUDY [--tracking-uri URI] [--storage URL]

A worker like ``bench worker``, except that all N processes train every trial together: rank 0
goes through the same startup sequence and worker loop as ``bench run`` (:func:`bench.run.start`,
:func:`bench.run.work`: it creates and enqueues the study if needed, closes dead trials, waits
for a confirmation stage) and does all Optuna and MLflow work, pseudo labels and stage 2; before
each stage-1 training (one per seed of a search trial) it sends the configuration to the other
ranks, which only join stage-1 training. Backend: NCCL on CUDA, gloo on the CPU.

With ``--worker`` rank 0 is a ``bench worker`` (the study must exist; it queues nothing): each
task of ``bench submit --gpus-per-worker G`` runs one rank, its rank read from Slurm's
environment (:func:`ranks_from_slurm`).

SIGINT / SIGTERM (torchrun passes them on to every rank as SIGTERM) are handled as by ``bench``
(:mod:`bench.signals`): rank 0 closes its trial as interrupted and prints the one line, every
rank exits with 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

import torch
import torch.distributed as dist

from tkp_pcl.config import MethodConfig
from tkp_pcl.stage1 import train_stage1

from ..signals import PREEMPT, exit_code, signum_of, stop_on_signals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run.ddp")
    ap.add_argument("study")
    ap.add_argument("--tracking-uri")
    ap.add_argument("--storage")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--worker", action="store_true", help="as `bench worker`: run queued trials, queue none")
    ap.set_defaults(command="run")  # validated as `bench run` validates its inputs
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with stop_on_signals():
        ranks_from_slurm()
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=dt.timedelta(hours=3))
        rank = dist.get_rank()
        try:
            return rank_zero(args) if rank == 0 else other_rank(args)
        except KeyboardInterrupt as e:
            if rank == 0:
                from ..cli import interrupted_line

                print(interrupted_line(e, "run"), file=sys.stderr)
            return exit_code(e)
        finally:
            dist.destroy_process_group()


def ranks_from_slurm() -> None:
    """Under a Slurm job of several tasks (``bench submit --gpus-per-worker G``), each task a
    rank: torch.distributed's variables (``MASTER_ADDR``, ``RANK``, ``LOCAL_RANK``, ...) from
    Slurm's, as torchrun sets them; nothing where they are set already or one task runs."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)  # each rank picks its GPU by LOCAL_RANK


def _broadcast(obj):
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_zero(args) -> int:
    """Rank 0: the study, its trials, tracking; on any error (a refused study file, data that
    does not load, a failing store) the other ranks are told to stop, then the error is
    reported in one line as ``bench`` reports it."""
    from ..cli import EXIT_BAD_INPUT, EXIT_FAILED_TRIALS, store_urls, validate_inputs
    from ..stores import StoreError
    from ..study import input_error_types
    from . import finish_parent, prepare, start, work
    from .queue import check_lost_results

    told = [False]

    def stop_others() -> None:
        if not told[0]:
            told[0] = True
            _broadcast(None)

    try:
        study = validate_inputs(args)
        h = start(study, args.study, *store_urls(args, study), create=not args.worker)
        check_lost_results(h) if args.worker else prepare(h)
        produced = work(h, before_stage1=lambda cfg, ckpt: _broadcast((cfg.model_dump(mode="json"), str(ckpt))))
        stop_others()
        finish_parent(h)
        return EXIT_FAILED_TRIALS if produced.get("FAIL") else 0
    except (*input_error_types(), StoreError) as e:
        stop_others()
        print(f"bench: error: {e}", file=sys.stderr)
        return e.exit_code if isinstance(e, StoreError) else EXIT_BAD_INPUT
    except KeyboardInterrupt as e:  # every rank is being stopped (torchrun signals them all): no broadcast,
        if signum_of(e) == PREEMPT:  # except after the soft stop, which the other ranks wait out
            stop_others()
        raise
    except BaseException:
        stop_others()
        raise


def other_rank(args) -> int:
    """A rank other than 0: train stage 1 of each configuration rank 0 sends, until told to stop."""
    from ..study import load_study
    from .startup import load_data

    study = load_study(args.study)
    splits, tune = load_data(study, args.study)
    splits = tune.report if tune is not None else splits  # with a tune split every trial trains on the joined images
    while (msg := _broadcast(None)) is not None:
        cfg, ckpt = MethodConfig.model_validate(msg[0]), msg[1]
        try:
            train_stage1(cfg, splits, checkpoint_path=ckpt, progress=False)
        except Exception as e:  # rank 0 records the failure; this rank waits for the next trial
            print(f"rank {dist.get_rank()}: {type(e).__name__}: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
