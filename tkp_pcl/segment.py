"""Stage 2: a segmentation network trained on pseudo labels, evaluated on the val masks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .config import ModelConfig, SegmentConfig
from .data.split import IGNORE_INDEX, Split
from .metrics import confusion_matrix
from .model import create_backbone
from .pseudo import resize_image
from .runtime import amp_setup, resolve_device, seed_everything
from .schedule import lr_factor

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ViTDecoder(nn.Module):
    """A timm ViT (fresh weights, any input size that is a multiple of the patch) with a linear
    per-patch decoder: (B, 3, H, W) -> logits (B, C, H, W), bilinear from the patch grid."""

    def __init__(self, model_cfg: ModelConfig, num_classes: int):
        super().__init__()
        cfg = model_cfg.model_copy(update={"pretrained": False})
        self.backbone = create_backbone(cfg, dynamic_img_size=True)
        self.patch = self.backbone.patch_embed.patch_size[0]
        self.num_prefix = getattr(self.backbone, "num_prefix_tokens", 1)
        self.norm = nn.LayerNorm(self.backbone.num_features)
        self.head = nn.Linear(self.backbone.num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        tokens = self.backbone.forward_features(x)[:, self.num_prefix :]
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
                weights=None, weights_backbone="DEFAULT" if pretrained_backbone else None,
                num_classes=num_classes, aux_loss=False,
            )  # fmt: skip
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
            pc = self.net.backbone.pretrained_cfg or {}
            mean, std = pc.get("mean", (0.5,) * 3), pc.get("std", (0.5,) * 3)
            self.multiple = self.net.patch
        else:
            self.net = TorchvisionDeepLab(cfg.model, num_classes, cfg.pretrained_backbone)
            mean, std, self.multiple = IMAGENET_MEAN, IMAGENET_STD, 8
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        return self.net((x - self.mean) / self.std)

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        """The backbone at ``lr``, the decoder head at ``lr * head_lr_mult`` (DeepLab: 10x)."""
        head_fn = getattr(self.net, "head_parameters", None)
        head = head_fn() if head_fn is not None and head_lr_mult != 1 else []
        ids = {id(p) for p in head}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": rest, "lr": lr}] + ([{"params": head, "lr": lr * head_lr_mult}] if head else [])


def make_optimizer(model: Segmenter, cfg: SegmentConfig) -> torch.optim.Optimizer:
    """AdamW, or SGD with momentum (DeepLab), over :meth:`Segmenter.param_groups`."""
    groups = model.param_groups(cfg.lr, cfg.head_lr_mult)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


class PseudoLabelDataset(Dataset):
    """Images of ``split`` with the pseudo-label PNGs in ``label_dir`` (named by image id),
    rescaled by a random factor in ``scale`` of their own size, cropped to S (labels padded with
    255) and mirrored: (3, S, S) uint8, (S, S) long."""

    def __init__(self, split: Split, label_dir: Path, size: int, scale: tuple[float, float]):
        self.split, self.label_dir, self.size, self.scale = split, Path(label_dir), size, scale

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        path = self.label_dir / f"{self.split.ids[i]}.png"
        if not path.is_file():
            raise FileNotFoundError(f"pseudo label {path} does not exist; make the pseudo labels first")
        img = Image.fromarray(self.split.load_image(i))
        lab = Image.open(path)
        f = float(torch.empty(1).uniform_(*self.scale))
        w, h = img.size
        nw, nh = max(1, round(w * f)), max(1, round(h * f))
        img = torch.from_numpy(np.array(img.resize((nw, nh), Image.BILINEAR))).permute(2, 0, 1)
        lab = torch.from_numpy(np.asarray(lab.resize((nw, nh), Image.NEAREST)).astype(np.int64))
        out_img = torch.zeros(3, self.size, self.size, dtype=torch.uint8)
        out_lab = torch.full((self.size, self.size), IGNORE_INDEX, dtype=torch.long)
        y0 = int(torch.randint(0, max(0, nh - self.size) + 1, ()))
        x0 = int(torch.randint(0, max(0, nw - self.size) + 1, ()))
        ch, cw = min(self.size, nh), min(self.size, nw)
        out_img[:, :ch, :cw] = img[:, y0 : y0 + ch, x0 : x0 + cw]
        out_lab[:ch, :cw] = lab[y0 : y0 + ch, x0 : x0 + cw]
        if torch.rand(()) < 0.5:
            out_img, out_lab = out_img.flip(-1), out_lab.flip(-1)
        return out_img, out_lab


def keep_aspect_size(hw: tuple[int, int], scale: float, multiple: int) -> tuple[int, int]:
    """(H, W) times ``scale``, each rounded to a multiple of ``multiple`` (at least one)."""
    h, w = (max(multiple, round(n * scale / multiple) * multiple) for n in hw)
    return h, w


@torch.no_grad()
def predict(model: Segmenter, image: np.ndarray, scales: list[float], flip: bool, device) -> Tensor:
    """Class probabilities (C, H, W) of one (H, W, 3) image at its own resolution and aspect:
    at each scale (1 = the image's own size) and, with ``flip``, mirrored, the softmax is
    resized back to H x W; the sum over scales and flips is returned."""
    h, w = image.shape[:2]
    total = None
    for sc in scales:
        x = resize_image(image, keep_aspect_size((h, w), sc, model.multiple))[None].to(device)
        views = [x, x.flip(-1)] if flip else [x]
        for k, v in enumerate(views):
            p = model(v).float().softmax(1)
            p = p.flip(-1) if k == 1 else p
            p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)[0]
            total = p if total is None else total + p
    return total


@dataclass
class SegmentResult:
    model: Segmenter
    conf: np.ndarray
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    examples: list[dict[str, np.ndarray]] = field(default_factory=list)


def evaluate_segmentation(
    model: Segmenter, split: Split, cfg: SegmentConfig, device, keep_examples: int = 0
) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """Confusion matrix (C, C) of the model on ``split``'s masks at each image's own size
    (:func:`predict` with ``cfg.eval_scales`` and ``cfg.eval_flip``), and a few examples."""
    model.eval()
    c = split.num_classes
    conf = np.zeros((c, c), np.int64)
    examples = []
    for i in range(len(split)):
        image, mask = split.load_image(i), split.load_mask(i)
        pred = predict(model, image, cfg.eval_scales, cfg.eval_flip, device).argmax(0).cpu().numpy().astype(np.uint8)
        conf += confusion_matrix(pred, mask, c)
        if i < keep_examples:
            examples.append({"image": image, "mask": mask, "pseudo": pred})
    return conf, examples


def train_segmentation(
    cfg: SegmentConfig,
    model_cfg: ModelConfig,
    train: Split,
    label_dir: str | Path,
    val: Split,
    seed: int = 0,
    device: str = "auto",
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    keep_examples: int = 0,
    progress: bool = True,
    loader_workers: int = 0,
) -> SegmentResult:
    """Train on ``train`` images with the pseudo labels in ``label_dir`` (cross-entropy, 255
    ignored, ``cfg.optimizer`` with a poly schedule), then score on ``val``'s masks (in float32)
    at their own resolution."""
    t0 = time.perf_counter()
    dev = resolve_device(device)
    gen = seed_everything(seed)
    size = cfg.crop_size or model_cfg.img_size
    model = Segmenter(cfg, model_cfg, train.num_classes).to(dev)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    net = torch.compile(model) if cfg.compile else model
    use_amp, amp_dtype, scaler = amp_setup(cfg.amp, dev)
    data = PseudoLabelDataset(train, Path(label_dir), size, (cfg.scale_min, cfg.scale_max))
    loader = DataLoader(
        data, batch_size=cfg.batch_size, shuffle=True, drop_last=len(data) >= cfg.batch_size, generator=gen,
        num_workers=loader_workers, pin_memory=dev.type == "cuda", persistent_workers=loader_workers > 0,
    )  # fmt: skip
    opt = make_optimizer(model, cfg)
    total = cfg.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, 0, "poly"))
    history = []
    for epoch in tqdm(range(cfg.epochs), desc="stage 2", disable=not progress, unit="epoch"):
        model.train()
        loss_sum, n = torch.zeros((), device=dev), 0
        for images, labels in loader:
            images = images.to(dev, non_blocking=True).to(memory_format=fmt)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                logits = net(images)
            loss = F.cross_entropy(logits.float(), labels.to(dev), ignore_index=IGNORE_INDEX)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += loss.detach() * images.shape[0]  # no host sync per step
            n += images.shape[0]
        history.append({"seg_loss": float(loss_sum) / max(n, 1)})
        if on_epoch_end is not None:
            on_epoch_end(epoch, history[-1])
    conf, examples = evaluate_segmentation(model, val, cfg, dev, keep_examples)
    return SegmentResult(model, conf, time.perf_counter() - t0, history, examples)
