"""Procedural multi-object scenes with exact masks: the embedded data set.

Built to expose the failure of max pooling that TKP-PCL targets. Six classes come in three
pairs; the two classes of a pair share the body (shape, colour, texture) and differ only in a
small *marker* (a coloured disc of ~12% of the object's size) somewhere inside the body:

=========  ===========  =================  ==============
pair       body shape   body texture       markers
=========  ===========  =================  ==============
disc       ellipse      plain sand          red / blue
slab       rectangle    slate, stripes      yellow / magenta
kite       triangle     olive, dots         cyan / orange
=========  ===========  =================  ==============

So the most discriminative part of each object is a few pixels, and the rest of its extent is
plain or shared with another class: a classifier trained through max pooling only needs the
marker patch to be right, and its class map under-covers the object. Objects vary in size
4x (log-uniform), up to ``max_objects`` per image, may occlude one another (never a marker),
over a textured background of low-frequency colour blobs and stripes. Same seed, same bytes:
every image is drawn from ``numpy.random.default_rng([seed, stream, index])``.
"""

from __future__ import annotations

import numpy as np

from .split import Split

CLASS_NAMES = (
    "background",
    "disc-red",
    "disc-blue",
    "slab-yellow",
    "slab-magenta",
    "kite-cyan",
    "kite-orange",
)
_BODY_COLOUR = {"disc": (176, 160, 128), "slab": (96, 124, 150), "kite": (128, 150, 92)}
_MARKER_COLOUR = {
    1: (225, 40, 40),
    2: (40, 70, 230),
    3: (235, 215, 40),
    4: (215, 50, 205),
    5: (40, 215, 215),
    6: (245, 135, 20),
}
_STREAMS = {"train": 0, "val": 1, "tune": 2}  # tune: held-out images for choosing hyper-parameters


def _body_of(cls: int) -> str:
    return ("disc", "slab", "kite")[(cls - 1) // 2]


def _inside(kind: str, u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    """Membership of object coordinates (u along the width a, v along the height b)."""
    if kind == "disc":
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if kind == "slab":
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    # kite: a triangle with its apex at v = -b and its base at v = +b
    return (v >= -b) & (v <= b) & (np.abs(u) <= a * (v + b) / (2 * b))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background: bilinear-upsampled colour blobs plus faint random stripes."""
    coarse = rng.uniform(40, 120, size=(4, 4, 3)).astype(np.float32)
    t = np.linspace(0, 3, size, dtype=np.float32)
    i0 = np.clip(np.floor(t).astype(int), 0, 2)
    f = (t - i0)[:, None]
    rows = coarse[i0] * (1 - f[..., None]) + coarse[i0 + 1] * f[..., None]  # (size, 4, 3)
    img = rows[:, i0] * (1 - f.T[..., None]) + rows[:, i0 + 1] * f.T[..., None]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(5, 12)
    stripes = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period)
    img += (rng.uniform(6, 16) * stripes)[..., None]
    return img


def render_scene(
    rng: np.random.Generator,
    size: int = 64,
    max_objects: int = 3,
    min_size: float = 12.0,
    max_size: float = 44.0,
    noise: float = 8.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image (size, size, 3) uint8 and its exact class mask (size, size) uint8."""
    img = _background(rng, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    markers: list[np.ndarray] = []
    n_obj = int(rng.integers(1, max_objects + 1))
    for _ in range(n_obj):
        cls = int(rng.integers(1, len(CLASS_NAMES)))
        kind = _body_of(cls)
        for _attempt in range(20):
            s = float(np.exp(rng.uniform(np.log(min_size), np.log(max_size))))
            a = s / 2 * rng.uniform(0.75, 1.0)
            b = s / 2 * rng.uniform(0.75, 1.0)
            cx, cy = rng.uniform(a * 0.6, size - a * 0.6), rng.uniform(b * 0.6, size - b * 0.6)
            th = rng.uniform(0, 2 * np.pi)
            c, sn = np.cos(th), np.sin(th)
            u = (xx - cx) * c + (yy - cy) * sn
            v = -(xx - cx) * sn + (yy - cy) * c
            body = _inside(kind, u, v, a, b)
            if body.sum() < 12 or any((body & m).any() for m in markers):
                continue
            # marker centre: a point well inside the body (inside the half-size shape)
            r_m = max(1.6, 0.12 * s)
            for _p in range(50):
                mu, mv = rng.uniform(-a / 2, a / 2), rng.uniform(-b / 2, b / 2)
                if _inside(kind, np.float32(mu), np.float32(mv), a / 2, b / 2):
                    break
            marker = ((u - mu) ** 2 + (v - mv) ** 2 <= r_m**2) & body
            if marker.sum() < 3:
                continue
            break
        else:
            continue
        colour = np.array(_BODY_COLOUR[kind], np.float32) + rng.uniform(-12, 12, 3)
        tex = np.zeros_like(u)
        if kind == "slab":
            tex = -28.0 * (np.sin(v * 2 * np.pi / 5.0) > 0.3)
        elif kind == "kite":
            tex = 26.0 * ((np.sin(u * 1.3) * np.sin(v * 1.3)) > 0.55)
        img[body] = colour + tex[body][:, None]
        img[marker] = np.array(_MARKER_COLOUR[cls], np.float32) + rng.uniform(-10, 10, 3)
        mask[body] = cls
        markers.append(marker)
    img += rng.normal(0, noise, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).round().astype(np.uint8), mask


def synthetic_split(
    stream: str,
    n_images: int,
    seed: int = 0,
    size: int = 64,
    max_objects: int = 3,
    min_size: float = 12.0,
    max_size: float = 44.0,
    noise: float = 8.0,
) -> Split:
    """A split of ``n_images`` scenes from stream ``train``, ``val`` or ``tune`` (disjoint draws)."""
    if stream not in _STREAMS:
        raise ValueError(f"unknown synthetic stream {stream!r}; valid: {', '.join(_STREAMS)}")
    images = np.empty((n_images, size, size, 3), np.uint8)
    masks = np.empty((n_images, size, size), np.uint8)
    for i in range(n_images):
        rng = np.random.default_rng([seed, _STREAMS[stream], i])
        images[i], masks[i] = render_scene(rng, size, max_objects, min_size, max_size, noise)
    names = [f"{stream}_{i:05d}" for i in range(n_images)]
    return Split.in_memory(f"synthetic-{stream}", CLASS_NAMES, names, images, masks)
