"""On-device augmentation inside the jitted step: uint8 clips → normalised float, random erasing, flips.

The host (`svreid_jax.data.decode`) ships uint8 clips; this float maths is free next to the backbone.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The reference's Random Erasing fills with the CIFAR mean, written after normalisation.
ERASE_FILL = (0.4914, 0.4822, 0.4465)


def normalize(video: jax.Array, dtype=jnp.float32) -> jax.Array:
    """uint8 [..., 3] in 0..255 → ImageNet-normalised float."""
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    return ((video.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)


def random_erasing(
    rng: jax.Array,
    video: jax.Array,
    *,
    probability: float = 0.5,
    area_range: tuple[float, float] = (0.02, 0.4),
    aspect_range: tuple[float, float] = (0.3, 1 / 0.3),
    attempts: int = 10,
) -> jax.Array:
    """Random Erasing on normalised clips, with the reference's clip semantics (docs/METHOD.md §2.2).

    video: float [B, T, H, W, C]. Per clip: erase with `probability`; the relative top-left corner is
    shared by all frames; area and aspect ratio are drawn per frame. The reference retries up to 100
    times until the box fits; we draw `attempts` candidates at once and keep the first that fits
    (a frame whose candidates all fail is left intact, as in the reference after 100 misses).
    """
    b, t, h, w, c = video.shape
    k_apply, k_pos, k_area, k_aspect = jax.random.split(rng, 4)
    apply = jax.random.uniform(k_apply, (b,)) < probability
    pos = jax.random.uniform(k_pos, (b, 1, 2))
    area = jax.random.uniform(k_area, (b, t, attempts), minval=area_range[0], maxval=area_range[1]) * h * w
    log_aspect = jax.random.uniform(
        k_aspect, (b, t, attempts), minval=np.log(aspect_range[0]), maxval=np.log(aspect_range[1])
    )
    aspect = jnp.exp(log_aspect)
    eh = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    ew = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (eh < h) & (ew < w)
    first = jnp.argmax(fits, axis=-1)
    any_fit = jnp.any(fits, axis=-1)
    eh = jnp.take_along_axis(eh, first[..., None], -1)[..., 0]
    ew = jnp.take_along_axis(ew, first[..., None], -1)[..., 0]
    top = jnp.floor(pos[..., 0] * (h - eh + 1)).astype(jnp.int32)  # [B, T]
    left = jnp.floor(pos[..., 1] * (w - ew + 1)).astype(jnp.int32)
    rows = jnp.arange(h)[None, None, :, None]
    cols = jnp.arange(w)[None, None, None, :]
    inside = (
        (rows >= top[..., None, None])
        & (rows < (top + eh)[..., None, None])
        & (cols >= left[..., None, None])
        & (cols < (left + ew)[..., None, None])
    )
    mask = inside & (apply[:, None] & any_fit)[..., None, None]
    fill = jnp.asarray(ERASE_FILL, video.dtype)
    return jnp.where(mask[..., None], fill, video)


def random_flip(rng: jax.Array, video: jax.Array) -> jax.Array:
    """Mirror each clip of [B, T, H, W, C] with probability 0.5 (one decision per clip)."""
    flip = jax.random.bernoulli(rng, 0.5, (video.shape[0],))
    return jnp.where(flip[:, None, None, None, None], video[:, :, :, ::-1], video)
