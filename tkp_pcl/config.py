"""Typed configuration of the method: one model, four named configurations.

ViT-PCM, "TK only", "PCL only" and TKP-PCL differ only in these values:

============  ===============  ==================
variant       ``pooling.kind``  ``loss.pce_weight``
============  ===============  ==================
vit-pcm       ``max``          0
tkp           ``topk``         0
pcl           ``max``          > 0
tkp-pcl       ``topk``         > 0
============  ===============  ==================

Every model forbids unknown keys, so a typo in a study file is an error, not a silent default.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")

#: The mark of an execution setting, put on the field where it is declared
#: (``Field(..., json_schema_extra=EXECUTION)``): how fast and where a configuration runs, not
#: what it computes. :data:`EXECUTION_KEYS` is derived from these marks.
EXECUTION = {"execution": True}


#: What torch's and numpy's generators take as a seed: ``0 <= seed < 2**32``.
SEED_MAX = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
#: The most epochs a configuration may train: far past any real schedule, short of one that never ends.
MAX_EPOCHS = 10_000


def _quote(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error never prints a whole input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class _Strict(BaseModel):
    """Unknown keys are errors, and so are ``inf`` and ``nan`` (a configuration is stored as JSON,
    which has neither: it must read back as it was written)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    """The patch classifier: a timm ViT, optional HV-BiLSTM, a linear classifier, a projection.

    ``depth``, ``embed_dim``, ``num_heads`` and ``patch_size`` override the timm model's own
    values (for small CPU models trained from scratch); ``None`` keeps timm's.

    Weights: ``pretrained_file`` (a timm state dict, ``.pth``/``.pt`` or ``.safetensors``, e.g.
    on a shared disk; a relative path is taken from the working directory) wins over
    ``pretrained`` (timm's weights from the Hugging Face cache); neither: trained from scratch.
    """

    backbone: str = "vit_tiny_patch16_224"
    pretrained: bool = False
    pretrained_file: str | None = Field(None, min_length=1)
    img_size: int = Field(64, ge=16, le=1024)
    patch_size: int | None = Field(8, ge=2, le=64)
    depth: int | None = Field(4, ge=1, le=48)
    embed_dim: int | None = Field(128, ge=16, le=2048)
    num_heads: int | None = Field(4, ge=1, le=32)
    hv_bilstm: bool = False
    lstm_hidden: int = Field(64, ge=4)
    lstm_dropout: float = Field(0.0, ge=0, lt=1)
    """HV-BiLSTM dropout as ViT-PCM's: on its input, and on each LSTM's input with one mask per
    sequence (Keras ``LSTM(dropout=)``); 0 = none (ViT-PCM: 0.2)."""
    dropout: float = Field(0.2, ge=0, lt=1)
    proj_dim: int = Field(64, ge=4, le=1024)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.embed_dim is not None and self.num_heads is not None:
            if self.embed_dim % self.num_heads:
                raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.patch_size is not None and self.img_size % self.patch_size:
            raise ValueError(f"img_size ({self.img_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.pretrained_file is not None and not self.pretrained_file.lower().endswith(WEIGHT_SUFFIXES):
            raise ValueError(
                f"pretrained_file must end in {', '.join(WEIGHT_SUFFIXES)} (got {_quote(self.pretrained_file)})"
            )
        return self


class PoolingConfig(_Strict):
    """Patch scores -> image scores. ``k`` (a fixed count) wins over ``k_ratio`` when set."""

    kind: Literal["max", "topk", "mean", "lse"] = "topk"
    k_ratio: float = Field(0.1, gt=0, le=1)
    k: int | None = Field(None, ge=1)
    lse_r: float = Field(5.0, gt=0)


class LossConfig(_Strict):
    """Weights and forms of the terms: image BCE, equivariance, PCE, classifier L2.

    ``eq_form``: ``flip`` (each batch and its mirror in one forward, each the other's target) or
    ``vitpcm`` (ViT-PCM's: an eval-mode teacher on view 1, the student on 2x2 mosaics of
    half-size views with their own flips, transpose and patch-aligned crop; see
    :mod:`tkp_pcl.stage1.equivariance`).
    """

    cls_weight: float = Field(1.0, ge=0)
    eq_weight: float = Field(1.0, ge=0)
    eq_form: Literal["flip", "vitpcm"] = "flip"
    eq_crop_prob: float = Field(0.3, ge=0, le=1)
    """``vitpcm`` only: probability of the patch-aligned crop of view 2 (ViT-PCM: 0.3 on VOC,
    0 on COCO); the crop side is 128/384 of the image, in whole patches."""
    cls_l2: float = Field(0.0, ge=0)
    """L2 penalty ``cls_l2 * sum(W**2)`` on the classifier's weights as a loss term (ViT-PCM:
    0.01, logged as ``loss_l2``)."""
    pce_weight: float = Field(0.1, ge=0)
    pce_form: Literal["infonce", "margin"] = "infonce"
    pce_temperature: float = Field(0.1, gt=0)
    pce_margin: float = Field(0.3, ge=-1, le=1)
    pce_max_patches: int = Field(1024, ge=2)
    pce_warmup_epochs: int = Field(1, ge=0)


class TrainConfig(_Strict):
    """Stage-1 optimisation. ``seed`` fixes weights, sampling order and augmentation. ``amp``
    (mixed precision where it is native: on CUDA bf16, or fp16 with a GradScaler; on a CPU with
    native bf16, bf16; float32 elsewhere, see ``tkp_pcl.runtime.amp_setup``) and ``compile``
    (``torch.compile`` of the training forward) change speed, not the method; ``amp`` also moves
    the numbers within rounding of a lower precision, so each run records the precision it ran in."""

    epochs: int = Field(10, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    optimizer: Literal["adamw", "adam"] = "adamw"
    """``adamw``: decoupled ``weight_decay``; ``adam``: plain Adam, no weight decay at all."""
    frozen_epochs: int = Field(0, ge=0)
    """Warm-up epochs with the whole backbone frozen at a constant ``frozen_lr`` (ViT-PCM: 1 at
    1e-3); ``lr``, ``schedule`` and ``warmup_epochs`` apply to the epochs after them, with a
    fresh optimizer."""
    frozen_lr: float = Field(1e-3, gt=0)
    trainable_blocks: int | None = Field(None, ge=0)
    """After the frozen epochs, train only the backbone's last N transformer blocks and its final
    norm (ViT-PCM: 5); ``None`` trains the whole backbone."""
    color_jitter: bool = False
    """ViT-PCM's colour jitter on every view: brightness, contrast, saturation, hue, p 0.5 each."""
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    amp: bool = Field(False, json_schema_extra=EXECUTION)
    compile: bool = Field(False, json_schema_extra=EXECUTION)
    device: str = Field("auto", json_schema_extra=EXECUTION)
    seed: Seed = 0
    monitor_images: int = Field(64, ge=0)
    num_threads: int | None = Field(None, ge=1, json_schema_extra=EXECUTION)

    @model_validator(mode="after")
    def _frozen_fewer_than_epochs(self) -> TrainConfig:
        if self.frozen_epochs >= self.epochs:
            raise ValueError(f"frozen_epochs ({self.frozen_epochs}) must be < epochs ({self.epochs})")
        return self


class CRFConfig(_Strict):
    """Dense CRF (Kraehenbuehl & Koltun) as in ViT-PCM; ``sxy`` in pixels of the full image."""

    enabled: bool = True
    gaussian_sxy: float = Field(1.0, gt=0)
    gaussian_compat: float = Field(3.0, ge=0)
    bilateral_sxy: float = Field(67.0, gt=0)
    bilateral_srgb: float = Field(3.0, gt=0)
    bilateral_compat: float = Field(4.0, ge=0)
    iterations: int = Field(10, ge=1)


class PseudoConfig(_Strict):
    """Patch maps -> pseudo labels. ``input_size``: the side in px images are resized to for
    prediction (ViT-PCM: 960 for a model trained at 384); the ViT's position embeddings are
    resampled to that grid; a multiple of the patch size; None predicts at ``model.img_size``.
    Labels are made at each image's own resolution either way."""

    input_size: int | None = Field(None, ge=16, le=4096)
    crf: CRFConfig = Field(default_factory=CRFConfig)
    workers: int = Field(2, ge=1, json_schema_extra=EXECUTION)


class SegmentConfig(_Strict):
    """Stage 2: a segmentation network trained on the pseudo labels, scored on val masks.

    ``vit_decoder``: a timm ViT shaped like ``model`` (fresh weights) with a linear per-patch
    decoder, upsampled; ``deeplabv3_mobilenet_v3_large`` / ``deeplabv3_resnet50`` /
    ``deeplabv3_resnet101``: torchvision's DeepLabv3 (``weights=None``; ``pretrained_backbone``
    loads ImageNet weights where present). ``optimizer``: ``adamw`` or ``sgd`` (momentum
    ``momentum``, as DeepLab), both with the poly schedule; ``head_lr_mult`` multiplies the lr of
    the decoder head (DeepLab: 10). Scale 1 is the image's own size, in training (random scale in
    [``scale_min``, ``scale_max``], then a ``crop_size`` crop) and in evaluation (each of
    ``eval_scales``, aspect kept, logits resized back to H x W and averaged, with flips where
    ``eval_flip``).
    ``amp`` (as stage 1's: CUDA bf16 or fp16, bf16 on a CPU that has it natively),
    ``channels_last`` (helps the convolutions of DeepLab, not a ViT) and ``compile``
    (``torch.compile`` of the training forward) are speed options that leave the result's
    meaning unchanged.
    """

    enabled: bool = False
    model: Literal["vit_decoder", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "deeplabv3_resnet101"] = (
        "vit_decoder"
    )
    pretrained_backbone: bool = False
    epochs: int = Field(5, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(16, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD's momentum (unused by adamw)."""
    head_lr_mult: float = Field(1.0, gt=0)
    """lr of the decoder head / lr of the backbone (DeepLab: 10)."""
    weight_decay: float = Field(1e-4, ge=0)
    crop_size: int | None = Field(None, ge=16)
    scale_min: float = Field(0.75, gt=0)
    scale_max: float = Field(1.25, gt=0)
    use_crf_labels: bool = True
    amp: bool = Field(False, json_schema_extra=EXECUTION)
    channels_last: bool = Field(False, json_schema_extra=EXECUTION)
    compile: bool = Field(False, json_schema_extra=EXECUTION)
    eval_scales: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    eval_flip: bool = False

    @model_validator(mode="after")
    def _scales(self) -> SegmentConfig:
        if self.scale_min > self.scale_max:
            raise ValueError(f"scale_min ({self.scale_min}) must be <= scale_max ({self.scale_max})")
        return self


class MethodConfig(_Strict):
    """Everything stage 1, pseudo-label generation and stage 2 need, except the data."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    pooling: PoolingConfig = Field(default_factory=PoolingConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    pseudo: PseudoConfig = Field(default_factory=PseudoConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)

    @model_validator(mode="after")
    def _pseudo_size_in_patches(self) -> MethodConfig:
        size, patch = self.pseudo.input_size, self.model.patch_size
        if size is not None and patch is not None and size % patch:
            raise ValueError(f"pseudo.input_size ({size}) must be a multiple of model.patch_size ({patch})")
        return self

    @model_validator(mode="after")
    def _vitpcm_needs_even_grid(self) -> MethodConfig:
        m = self.model
        if self.loss.eq_form == "vitpcm" and m.patch_size and (m.img_size // m.patch_size) % 2:
            raise ValueError(
                f"loss.eq_form vitpcm packs half-size views into 2x2 mosaics: the patch grid "
                f"(img_size / patch_size = {m.img_size // m.patch_size}) must be even"
            )
        return self


class SyntheticDataConfig(_Strict):
    """The procedural scenes of :mod:`tkp_pcl.data.synthetic`."""

    kind: Literal["synthetic"] = "synthetic"
    seed: Seed = 0
    n_train: int = Field(512, ge=1)
    n_val: int = Field(128, ge=1)
    size: int = Field(64, ge=16, le=1024)
    max_objects: int = Field(3, ge=1, le=10)
    min_size: float = Field(12.0, gt=2)
    max_size: float = Field(44.0, gt=2)
    noise: float = Field(8.0, ge=0)

    @model_validator(mode="after")
    def _sizes(self) -> SyntheticDataConfig:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) must be <= max_size ({self.max_size})")
        return self


class VOCDataConfig(_Strict):
    """PASCAL VOC 2012 layout under ``root``: stage 1 trains on ``train_split``, pseudo labels
    are made and scored on ``pseudo_split``, stage 2 trains on the pseudo labels of
    ``seg_train_split`` (None: ``train_split``) and is scored on ``val_split``."""

    kind: Literal["voc"] = "voc"
    root: str
    train_split: str = "train_aug"
    pseudo_split: str = "train"
    seg_train_split: str | None = None
    """Stage 2's training images (their pseudo labels); None: the stage-1 ``train_split``."""
    val_split: str = "val"
    mask_dir: Literal["auto", "SegmentationClass", "SegmentationClassAug"] = "auto"
    max_images: int | None = Field(None, ge=1)
    loader_workers: int = Field(4, ge=0, json_schema_extra=EXECUTION)


class CocoDataConfig(_Strict):
    """MS COCO 2014 under ``root``: ``train2014/``, ``val2014/`` (JPEGs) and class-id masks
    ``SegmentationClass/{train2014,val2014}/*.png`` (``bench data coco-masks``). Stage 1 trains on
    ``train_split``, pseudo labels are scored on the first ``pseudo_images`` of ``pseudo_split``
    (None: all), stage 2 trains on ``seg_train_split`` (None: ``train_split``) and is scored on
    ``val_split``. Only images with a mask are used; ``max_images`` caps every split."""

    kind: Literal["coco"] = "coco"
    root: str
    train_split: Literal["train2014", "val2014"] = "train2014"
    pseudo_split: Literal["train2014", "val2014"] = "train2014"
    pseudo_images: int | None = Field(None, ge=1)
    """How many images of ``pseudo_split`` pseudo labels are scored on (the first, by id)."""
    seg_train_split: Literal["train2014", "val2014"] | None = None
    """Stage 2's training images (their pseudo labels); None: the stage-1 ``train_split``."""
    val_split: Literal["train2014", "val2014"] = "val2014"
    max_images: int | None = Field(None, ge=1)
    loader_workers: int = Field(4, ge=0, json_schema_extra=EXECUTION)


DataConfig = Annotated[SyntheticDataConfig | VOCDataConfig | CocoDataConfig, Field(discriminator="kind")]


def execution_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of the fields of ``model`` marked :data:`EXECUTION`, in field order, looking
    into fields that are themselves models (e.g. ``pseudo.crf``)."""
    paths = []
    for name, f in model.model_fields.items():
        if (f.json_schema_extra or {}).get("execution"):
            paths.append(f"{prefix}{name}")
        elif isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            paths += execution_paths(f.annotation, f"{prefix}{name}.")
    return paths


#: Execution settings: how fast and where a configuration runs, not what it computes. They are
#: left out of a configuration's identity (``bench``'s configuration hash and its comparison of a
#: study file with a stored study), so a study can be continued on another machine (CPU -> GPU).
#: Dotted paths into ``MethodConfig`` (and ``data.`` into the data configurations), derived from
#: the :data:`EXECUTION` marks on the fields: a setting marked there is out of the identity.
EXECUTION_KEYS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [*execution_paths(MethodConfig)]
        + [p for kind in (SyntheticDataConfig, VOCDataConfig, CocoDataConfig) for p in execution_paths(kind, "data.")]
    )
)


def with_execution(cfg: MethodConfig, source: MethodConfig) -> MethodConfig:
    """A copy of ``cfg`` (e.g. a stored configuration) with the execution settings of ``source``
    (this machine's study file); every other value is ``cfg``'s."""
    out = cfg.model_copy(deep=True)
    for dotted in EXECUTION_KEYS:
        section, _, name = dotted.partition(".")
        if hasattr(out, section) and name in type(getattr(out, section)).model_fields:
            setattr(getattr(out, section), name, getattr(getattr(source, section), name))
    return out
