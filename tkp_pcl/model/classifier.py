"""The patch classifier: timm ViT patch tokens -> (optional HV-BiLSTM) -> per-patch softmax."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..imaging import backbone_mean_std, normalise, num_prefix_tokens, patch_tokens
from .backbone import create_backbone


@dataclass
class PatchOutput:
    """What one forward pass gives.

    ``probs`` (B, N, C) softmax over classes per patch (background is class 0);
    ``embeddings`` (B, N, d) L2-normalised projections for PCE; ``grid`` the (h, w) patch grid of
    this input, N = h * w (``H // patch, W // patch`` for images (B, 3, H, W)).
    """

    probs: Tensor
    embeddings: Tensor
    grid: tuple[int, int]


def sequence_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout with one mask per sequence, the same at every step: (n, L, d) -> (n, L, d). What
    Keras' ``LSTM(dropout=p)`` applies to an LSTM's inputs (PyTorch's ``nn.LSTM(dropout=)`` acts
    only between stacked layers)."""
    if not training or p == 0:
        return x
    return x * F.dropout(x.new_ones(x.shape[0], 1, x.shape[2]), p, training=True)


class HVBiLSTM(nn.Module):
    """ViT-PCM's patch conditioning: a BiLSTM along rows and one along columns, concatenated.

    (B, h, w, D) -> (B, h, w, D); when 4 * hidden != D a linear layer maps back to D.
    ``dropout`` as ViT-PCM's (``Dropout(p)`` on the input, then ``LSTM(dropout=p)``): element-wise
    dropout on the input, then each LSTM's input sequences get their own per-sequence mask
    (:func:`sequence_dropout`). No dropout on the output here: the classifier's own dropout
    (``model.dropout``) follows, as in ViT-PCM.
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.rows = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.cols = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Identity() if 4 * hidden == dim else nn.Linear(4 * hidden, dim)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.p = dropout

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, d = x.shape
        x = self.drop(x)
        rows = sequence_dropout(x.reshape(b * h, w, d), self.p, self.training)
        cols = sequence_dropout(x.transpose(1, 2).reshape(b * w, h, d), self.p, self.training)
        rows, _ = self.rows(rows)
        cols, _ = self.cols(cols)
        rows = rows.reshape(b, h, w, -1)
        cols = cols.reshape(b, w, h, -1).transpose(1, 2)
        return self.out(torch.cat([rows, cols], dim=-1))


class PatchClassifier(nn.Module):
    """One model for ViT-PCM, TK only, PCL only and TKP-PCL (the difference is in the losses).

    The backbone is built with timm's ``dynamic_img_size=True``: at ``cfg.img_size`` it computes
    exactly what a fixed-size ViT does (its position embeddings are used as they are); any other
    multiple of the patch size resamples them (bicubic, ``timm.layers.resample_abs_pos_embed``)
    to that grid, which is how pseudo labels are made at ``pseudo.input_size``. ``grid`` is the
    patch grid at ``cfg.img_size``; each forward reports the grid of its own input.
    """

    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.backbone = create_backbone(cfg, dynamic_img_size=True)
        if not hasattr(self.backbone, "patch_embed"):
            raise ValueError(f"backbone {cfg.backbone!r} is not a timm ViT (no patch_embed)")
        dim = self.backbone.num_features
        self.grid: tuple[int, int] = tuple(self.backbone.patch_embed.grid_size)
        self.patch: tuple[int, int] = tuple(self.backbone.patch_embed.patch_size)
        self.num_prefix = num_prefix_tokens(self.backbone)
        self.condition = HVBiLSTM(dim, cfg.lstm_hidden, cfg.lstm_dropout) if cfg.hv_bilstm else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        self.projection = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, cfg.proj_dim))
        mean, std = backbone_mean_std(self.backbone)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def grid_of(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) patch grid of (H, W) images; ValueError unless both are multiples of the patch."""
        (ph, pw) = self.patch
        if height % ph or width % pw:
            raise ValueError(f"images of {height}x{width} px are not a whole number of {ph}x{pw} px patches")
        return height // ph, width // pw

    def patch_features(self, images: Tensor) -> Tensor:
        """uint8 or [0, 1] float images (B, 3, H, W), H and W multiples of the patch size ->
        patch tokens (B, N, D), N = (H // patch) * (W // patch)."""
        return patch_tokens(self.backbone, normalise(images, self.mean, self.std))

    def forward(self, images: Tensor) -> PatchOutput:
        """Images (B, 3, H, W) -> :class:`PatchOutput` on the (H // patch, W // patch) grid."""
        h, w = self.grid_of(*images.shape[-2:])
        feats = self.patch_features(images)
        b, n, d = feats.shape
        if n != h * w:  # a backbone that pads or pools its patches
            raise ValueError(f"got {n} patch tokens for a {h}x{w} grid from {tuple(images.shape[-2:])} px images")
        feats = self.condition(feats.reshape(b, h, w, d)).reshape(b, n, d)
        logits = self.classifier(self.dropout(feats))
        emb = F.normalize(self.projection(feats), dim=-1)
        return PatchOutput(probs=logits.float().softmax(-1), embeddings=emb, grid=(h, w))
