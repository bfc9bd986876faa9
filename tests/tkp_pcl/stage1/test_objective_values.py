"""The composed stage-1 objective: each returned term equals its loss computed from the same
forward passes and draws (the draws in the documented order: flip decisions, or view-1 flips,
view-2 flips and crops, then PCE sampling), and ``loss`` the weighted sum, with hand values for
the L2 term and distinct weights so that a swapped weight shows."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tkp_pcl.config import MethodConfig
from tkp_pcl.model import PatchOutput

# the code under test and its parts, imported in one place (module paths move: edit only these)
from tkp_pcl.stage1.augment import apply_flips, color_jitter, crop_patches, draw_crops, draw_flips, mosaic, view2
from tkp_pcl.stage1.equivariance import mosaic_equivariance_loss
from tkp_pcl.stage1.losses import equivariance_loss, image_loss, patch_contrastive_error, patch_labels_from_probs
from tkp_pcl.stage1.objective import LOSS_TERMS, stage1_loss
from tkp_pcl.stage1.pooling import pool

P, S, C = 2, 8, 3  # patch 2 px, images 8 px: a 4x4 grid; 3 classes


class Stub(nn.Module):
    """A patch classifier small enough to reason about: the mean colour of each patch plus its
    position, a bias-free linear classifier; sharper logits in training mode (a stand-in for
    dropout, so the eval-mode teacher differs). Not flip-equivariant (the position feature)."""

    def __init__(self):
        super().__init__()
        self.grid, self.patch = (S // P, S // P), (P, P)
        self.classifier = nn.Linear(4, C, bias=False)
        self.proj = nn.Linear(4, 5, bias=False)
        with torch.no_grad():
            self.classifier.weight.copy_(
                torch.tensor([[0.5, -1.0, 2.0, 1.5], [-1.5, 2.0, 0.0, -2.0], [1.0, 0.5, -0.5, 0.5]])
            )
            self.proj.weight.copy_(torch.linspace(-1, 1, 20).reshape(5, 4) + torch.eye(5, 4))

    def forward(self, images):
        x = images.float()
        h, w = x.shape[-2] // P, x.shape[-1] // P
        feats = F.avg_pool2d(x, P).flatten(2).transpose(1, 2)  # (B, N, 3)
        pos = torch.arange(h * w, dtype=torch.float32) / (h * w)
        feats = torch.cat([feats, pos[None, :, None].expand(x.shape[0], -1, 1)], -1)
        logits = self.classifier(feats) * (1.5 if self.training else 1.0)
        return PatchOutput(probs=logits.softmax(-1), embeddings=F.normalize(self.proj(feats), dim=-1), grid=(h, w))


def config(form, jitter=False, pooling=None, **loss):
    base = dict(
        cls_weight=0.7,
        eq_weight=0.3,
        pce_weight=0.2,
        cls_l2=0.05,
        eq_form=form,
        pce_form="margin",
        pce_max_patches=20,
        eq_crop_prob=0.5,
    )
    base.update(loss)
    return MethodConfig(pooling=pooling or {"kind": "topk", "k": 3}, loss=base, train={"color_jitter": jitter})


def batch(b=3):
    g = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (b, 3, S, S), generator=g, dtype=torch.uint8)
    labels = torch.tensor([[1.0, 1, 0], [1, 0, 1], [1, 1, 1], [1, 0, 0]])[:b]
    return images, labels


def reference(cfg, images, labels, seed, use_pce):
    """The terms, composed from the parts with the documented draws."""
    lc, net, g, b = cfg.loss, Stub().train(), torch.Generator().manual_seed(seed), images.shape[0]
    if lc.eq_form == "flip":
        flip = torch.rand(b, generator=g) < 0.5
        images = torch.stack([im.flip(-1) if f else im for im, f in zip(images, flip)])
        if cfg.train.color_jitter:
            images = color_jitter(images.float() / 255.0, g)
        out = net(torch.cat([images, images.flip(-1)]))
        probs, view_labels = out.probs, torch.cat([labels, labels])
        l_eq = equivariance_loss(probs[:b], probs[b:], labels, out.grid) if lc.eq_weight else torch.tensor(0.0)
        emb = out.embeddings
    else:
        x = images.float() / 255.0
        x1 = color_jitter(x, g) if cfg.train.color_jitter else x
        flips1 = draw_flips(b, g)
        view1 = apply_flips(x1, flips1)
        if lc.eq_weight:
            x2 = color_jitter(x, g) if cfg.train.color_jitter else x
            flips2 = draw_flips(b, g)
            crops = draw_crops(b, S // P, crop_patches(S // P), lc.eq_crop_prob, g)
            mosaics = mosaic(view2(x2, crops, flips2, unit=P, size=S // 2))
            teacher = Stub().eval()(view1).probs
            out = net(torch.cat([view1, mosaics]))
            l_eq = mosaic_equivariance_loss(teacher, out.probs[b:], labels, out.grid, flips1, crops, flips2)
        else:
            out = net(view1)
            l_eq = torch.tensor(0.0)
        probs, view_labels, emb = out.probs[:b], labels, out.embeddings[:b]
    pc = cfg.pooling
    l_cls = image_loss(pool(probs, pc.kind, k_ratio=pc.k_ratio, k=pc.k, lse_r=pc.lse_r), view_labels)
    l_pce = torch.tensor(0.0)
    if use_pce:
        l_pce = patch_contrastive_error(
            emb,
            patch_labels_from_probs(probs, view_labels),
            temperature=lc.pce_temperature,
            max_patches=lc.pce_max_patches,
            form=lc.pce_form,
            margin=lc.pce_margin,
            generator=g,
        )
    # L2 by hand: squares of the classifier weights above sum to
    # (0.25 + 1 + 4 + 2.25) + (2.25 + 4 + 0 + 4) + (1 + 0.25 + 0.25 + 0.25) = 19.5
    l_l2 = torch.tensor(lc.cls_l2 * 19.5)
    loss = lc.cls_weight * l_cls + lc.eq_weight * l_eq + lc.pce_weight * l_pce + l_l2
    return dict(zip(LOSS_TERMS, (loss, l_cls, l_eq, l_pce, l_l2)))


def check(cfg, use_pce, seed=0, b=3, **kw):
    images, labels = batch(b)
    net = Stub().train()
    got = stage1_loss(net, images, labels, cfg, torch.Generator().manual_seed(seed), use_pce, **kw)
    want = reference(cfg, images, labels, seed, use_pce)
    assert list(got) == list(LOSS_TERMS)
    for k in LOSS_TERMS:
        torch.testing.assert_close(got[k].float(), want[k].float(), rtol=1e-5, atol=1e-6, msg=k)
    assert net.training  # left in training mode
    return got


@pytest.mark.parametrize("form", ["flip", "vitpcm"])
@pytest.mark.parametrize("jitter", [False, True])
def test_terms_equal_their_parts(form, jitter):
    got = check(config(form, jitter), use_pce=True)
    assert got["loss_eq"] > 0 and got["loss_pce"] > 0 and got["loss_cls"] > 0
    assert got["loss_l2"].item() == pytest.approx(0.05 * 19.5)
    for seed in (1, 2, 3):  # other draws: other flips and crops
        check(config(form, jitter, pce_form="infonce"), use_pce=True, seed=seed)


@pytest.mark.parametrize("form", ["flip", "vitpcm"])
def test_terms_that_are_off_are_zero(form):
    got = check(config(form, eq_weight=0.0, cls_l2=0.0), use_pce=False)
    assert got["loss_eq"].item() == 0 and got["loss_pce"].item() == 0 and got["loss_l2"].item() == 0
    assert got["loss"].item() == pytest.approx(0.7 * got["loss_cls"].item(), rel=1e-6)


def test_every_param_in_graph_keeps_the_projection_with_zero_gradient():
    images, labels = batch()
    net = Stub().train()
    got = stage1_loss(
        net, images, labels, config("flip"), torch.Generator().manual_seed(0), False, every_param_in_graph=True
    )
    assert got["loss_pce"].item() == 0.0
    got["loss"].backward()
    assert net.proj.weight.grad is not None and not net.proj.weight.grad.any()
    assert net.classifier.weight.grad.abs().sum() > 0


def test_model_is_the_bare_classifier_for_teacher_and_l2():
    images, labels = batch()
    net, bare = Stub().train(), Stub().train()
    with torch.no_grad():
        bare.classifier.weight.mul_(2.0)  # squares x 4: L2 = 0.05 * 78
    got = stage1_loss(net, images, labels, config("flip"), torch.Generator().manual_seed(0), False, model=bare)
    assert got["loss_l2"].item() == pytest.approx(0.05 * 78.0)


@pytest.mark.parametrize("form", ["flip", "vitpcm"])
def test_autocast_runs_the_forwards_in_bfloat16(form):
    images, labels = batch()
    cfg = config(form)
    plain = stage1_loss(Stub().train(), images, labels, cfg, torch.Generator().manual_seed(0), True)
    amp = stage1_loss(
        Stub().train(), images, labels, cfg, torch.Generator().manual_seed(0), True, autocast=(True, torch.bfloat16)
    )
    assert torch.isfinite(amp["loss"])
    if form == "vitpcm":  # images in [0, 1]: bf16 logits stay close (the flip form sees 0..255)
        assert amp["loss"].item() == pytest.approx(plain["loss"].item(), rel=0.05)
    assert amp["loss"].item() != plain["loss"].item()


@pytest.mark.parametrize("form", ["flip", "vitpcm"])
@pytest.mark.parametrize(
    "pooling,pce",
    [
        ({"kind": "topk", "k_ratio": 0.4}, {"pce_form": "infonce", "pce_temperature": 0.3}),
        ({"kind": "lse", "lse_r": 2.0}, {"pce_form": "margin", "pce_margin": 0.1}),
        ({"kind": "max"}, {"pce_form": "margin", "pce_margin": 0.9}),
    ],
)
def test_the_configured_pooling_and_pce_settings_reach_their_terms(form, pooling, pce):
    """Non-default K ratio, LSE sharpness, pooling kind, temperature and margin, on a batch of 4
    (so a batch size read from the wrong axis shows)."""
    cfg = config(form, pooling=pooling, **pce)
    got = check(cfg, True, b=4)
    other = config(form, **pce)  # the default test pooling (top-3): another image loss
    assert not torch.isclose(got["loss_cls"], check(other, True, b=4)["loss_cls"])


def test_vitpcm_without_equivariance_still_feeds_the_pce_its_embeddings():
    """ViT-PCM's form with the equivariance off: one forward of view 1, whose embeddings the PCE reads."""
    got = check(config("vitpcm", eq_weight=0.0), True, b=4)
    assert got["loss_eq"] == 0 and got["loss_pce"] > 0
