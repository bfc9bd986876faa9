"""The timm ViT every network here is built on, and where its weights come from."""

from __future__ import annotations

import timm
from torch import nn

from ..config import ModelConfig
from .weights import load_pretrained_file


def create_backbone(cfg: ModelConfig, **extra) -> nn.Module:
    """A timm ViT without its head; ``None`` fields keep the timm model's own values; ``extra``
    goes to ``timm.create_model`` (e.g. ``dynamic_img_size=True``).

    Weights: ``cfg.pretrained_file`` when set (it wins over ``cfg.pretrained``; see
    :func:`tkp_pcl.model.weights.load_pretrained_file`), else timm's pretrained weights (Hugging Face
    cache) when ``cfg.pretrained``, else a fresh initialisation.
    """
    overrides = {
        k: v
        for k, v in dict(
            patch_size=cfg.patch_size,
            depth=cfg.depth,
            embed_dim=cfg.embed_dim,
            num_heads=cfg.num_heads,
        ).items()
        if v is not None
    }
    from_hub = cfg.pretrained and cfg.pretrained_file is None
    try:
        model = timm.create_model(
            cfg.backbone,
            pretrained=from_hub,
            num_classes=0,
            img_size=cfg.img_size,
            **overrides,
            **extra,
        )
    except (OSError, RuntimeError) as e:
        # offline and uncached, huggingface_hub raises LocalEntryNotFoundError (an OSError); a
        # failed download surfaces as an OSError or a RuntimeError naming the Hub
        hub = isinstance(e, OSError) or "Hub" in str(e) or "download" in str(e).lower()
        if not (from_hub and hub):
            raise
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise RuntimeError(
            f"pretrained weights for {cfg.backbone!r} could not be loaded ({type(e).__name__}: {first}); put "
            "them in the Hugging Face cache (HF_HOME), or a file in model.pretrained_file, or set "
            "model.pretrained: false"
        ) from e
    if cfg.pretrained_file is not None:
        load_pretrained_file(model, cfg.pretrained_file)
    return model


def check_pretrained_file(cfg: ModelConfig) -> None:
    """Build the backbone of ``cfg`` once to check its ``pretrained_file`` (no-op when unset).
    Raises :class:`tkp_pcl.model.weights.WeightsError`: a harness can refuse a study before training."""
    if cfg.pretrained_file is not None:
        create_backbone(cfg)
