"""The networks: stage 1's patch classifier on a timm ViT, stage 2's segmentation networks, and
backbone weights from timm or from a file."""

from .backbone import check_pretrained_file, create_backbone
from .classifier import HVBiLSTM, PatchClassifier, PatchOutput, sequence_dropout
from .segmenter import Segmenter, TorchvisionDeepLab, ViTDecoder
from .weights import WeightsError, load_pretrained_file, read_state_dict

__all__ = [
    "HVBiLSTM",
    "PatchClassifier",
    "PatchOutput",
    "Segmenter",
    "TorchvisionDeepLab",
    "ViTDecoder",
    "WeightsError",
    "check_pretrained_file",
    "create_backbone",
    "load_pretrained_file",
    "read_state_dict",
    "sequence_dropout",
]
