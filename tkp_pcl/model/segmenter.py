"""Stage 2's segmentation networks: a ViT with a linear decoder, or torchvision's DeepLabv3."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig, SegmentConfig
from ..imaging import backbone_mean_std, normalise, patch_tokens
from .backbone import create_backbone

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ViTDecoder(nn.Module):
    """A timm ViT (fresh weights, any input size that is a multiple of the patch) with a linear
    per-patch decoder: (B, 3, H, W) -> logits (B, C, H, W), bilinear from the patch grid."""

    def __init__(self, model_cfg: ModelConfig, num_classes: int):
        super().__init__()
        cfg = model_cfg.model_copy(update={"pretrained": False})
        self.backbone = create_backbone(cfg, dynamic_img_size=True)
        self.patch = self.backbone.patch_embed.patch_size[0]
        self.norm = nn.LayerNorm(self.backbone.num_features)
        self.head = nn.Linear(self.backbone.num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        tokens = patch_tokens(self.backbone, x)
        logits = self.head(self.norm(tokens)).transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.norm.parameters(), *self.head.parameters()]


class TorchvisionDeepLab(nn.Module):
    """torchvision's DeepLabv3; returns the main head's logits (B, C, H, W)."""

    def __init__(self, name: str, num_classes: int, pretrained_backbone: bool):
        super().__init__()
        import torchvision.models.segmentation as seg

        try:
            self.net = getattr(seg, name)(
                weights=None,
                weights_backbone="DEFAULT" if pretrained_backbone else None,
                num_classes=num_classes,
                aux_loss=False,
            )
        except OSError as e:  # URLError included: no network and no cached weights
            raise RuntimeError(
                f"ImageNet weights for the backbone of {name!r} could not be loaded ({e}); put them in "
                "$TORCH_HOME/hub/checkpoints or set segment.pretrained_backbone: false"
            ) from e

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)["out"]

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.net.classifier.parameters())


class Segmenter(nn.Module):
    """Normalises uint8 images and runs the chosen network: (B, 3, H, W) -> (B, C, H, W).

    ``net``: a ready network instead of ``cfg.model`` (fed images scaled to [0, 1], any size:
    a hand-made model in a test); ``multiple``: the input sides are rounded to a multiple of it.
    """

    def __init__(self, cfg: SegmentConfig, model_cfg: ModelConfig, num_classes: int, net: nn.Module | None = None):
        super().__init__()
        if net is not None:
            self.net = net
            mean, std, self.multiple = (0.0,) * 3, (1.0,) * 3, 1
        elif cfg.model == "vit_decoder":
            self.net: nn.Module = ViTDecoder(model_cfg, num_classes)
            mean, std = backbone_mean_std(self.net.backbone)
            self.multiple = self.net.patch
        else:
            self.net = TorchvisionDeepLab(cfg.model, num_classes, cfg.pretrained_backbone)
            mean, std, self.multiple = IMAGENET_MEAN, IMAGENET_STD, 8
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.net(normalise(images, self.mean, self.std))

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        """The backbone at ``lr``, the decoder head at ``lr * head_lr_mult`` (DeepLab: 10x)."""
        head_fn = getattr(self.net, "head_parameters", None)
        head = head_fn() if head_fn is not None and head_lr_mult != 1 else []
        ids = {id(p) for p in head}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": rest, "lr": lr}] + ([{"params": head, "lr": lr * head_lr_mult}] if head else [])
