"""Stage 1: the patch classifier trained from image labels (pooling, losses, views, schedule,
checkpoint and the training loop)."""

from . import checkpoint
from .checkpoint import Checkpoint, CheckpointError
from .objective import EQ_FORMS, LOSS_TERMS, stage1_loss
from .pooling import POOLINGS, pool
from .train import ImageLabelDataset, NonFiniteLossError, Stage1Result, StoppedByRankZero, monitor_miou, train_stage1

__all__ = [
    "EQ_FORMS",
    "LOSS_TERMS",
    "POOLINGS",
    "Checkpoint",
    "CheckpointError",
    "ImageLabelDataset",
    "NonFiniteLossError",
    "Stage1Result",
    "StoppedByRankZero",
    "checkpoint",
    "monitor_miou",
    "pool",
    "stage1_loss",
    "train_stage1",
]
