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


ERASING_SAMPLERS = ("log_aspect", "authors")
# Candidate boxes drawn per frame: the authors' loop gives up after 100 misses.
_DEFAULT_ATTEMPTS = {"log_aspect": 10, "authors": 100}


def erasing_boxes(rng: jax.Array, shape: tuple[int, int, int, int], *, probability: float = 0.5,
                  area_range: tuple[float, float] = (0.02, 0.4), aspect_range: tuple[float, float] = (0.3, 1 / 0.3),
                  sampler: str = "log_aspect", attempts: int | None = None) -> dict[str, jax.Array]:
    """The Random Erasing boxes of clips of `shape` = (B, T, H, W), in pixels (docs/METHOD.md §2.2).

    Per clip: erase with `probability`, one relative corner (u_y, u_x) ~ U(0, 1)² shared by the T frames;
    per frame: area A ~ U(area_range)·H·W and aspect r, h = round(√(A r)), w = round(√(A/r)), the first
    of `attempts` candidates with h < H and w < W kept (none: the frame stays intact).
      sampler='log_aspect': log r ~ U(log r_min, log r_max) (as many boxes wider as taller), top =
        ⌊u_y (H − h + 1)⌋ (every fitting row equally likely), 10 candidates;
      sampler='authors': r ~ U(r_min, r_max) (about 77 % taller than wide at [0.3, 1/0.3]), top =
        round(u_y (H − h)) (half weight on the two edge rows), 100 candidates, as the authors' code.
    round() is half-to-even in both, as Python's. Returns int32 [B, T] 'top', 'left', 'height', 'width'
    and bool [B, T] 'erase' (the clip is erased and a candidate fitted).
    """
    if sampler not in ERASING_SAMPLERS:
        raise ValueError(f"config.augment.erasing_sampler={sampler!r}; expected one of {ERASING_SAMPLERS}")
    attempts = _DEFAULT_ATTEMPTS[sampler] if attempts is None else attempts
    b, t, h, w = shape
    k_apply, k_pos, k_area, k_aspect = jax.random.split(rng, 4)
    apply = jax.random.uniform(k_apply, (b,)) < probability
    pos = jax.random.uniform(k_pos, (b, 1, 2))
    area = jax.random.uniform(k_area, (b, t, attempts), minval=area_range[0], maxval=area_range[1]) * h * w
    if sampler == "authors":
        aspect = jax.random.uniform(k_aspect, (b, t, attempts), minval=aspect_range[0], maxval=aspect_range[1])
    else:
        aspect = jnp.exp(jax.random.uniform(k_aspect, (b, t, attempts), minval=np.log(aspect_range[0]),
                                            maxval=np.log(aspect_range[1])))
    eh = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    ew = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (eh < h) & (ew < w)
    first = jnp.argmax(fits, axis=-1)
    any_fit = jnp.any(fits, axis=-1)
    eh = jnp.take_along_axis(eh, first[..., None], -1)[..., 0]
    ew = jnp.take_along_axis(ew, first[..., None], -1)[..., 0]
    if sampler == "authors":
        top = jnp.round(pos[..., 0] * (h - eh)).astype(jnp.int32)  # [B, T]
        left = jnp.round(pos[..., 1] * (w - ew)).astype(jnp.int32)
    else:
        top = jnp.floor(pos[..., 0] * (h - eh + 1)).astype(jnp.int32)
        left = jnp.floor(pos[..., 1] * (w - ew + 1)).astype(jnp.int32)
    return {"top": top, "left": left, "height": eh, "width": ew, "erase": apply[:, None] & any_fit}


def random_erasing(rng: jax.Array, video: jax.Array, *, probability: float = 0.5,
                   area_range: tuple[float, float] = (0.02, 0.4), aspect_range: tuple[float, float] = (0.3, 1 / 0.3),
                   sampler: str = "log_aspect", attempts: int | None = None) -> jax.Array:
    """Random Erasing on normalised clips, with the reference's clip semantics (docs/METHOD.md §2.2).

    video: float [B, T, H, W, C]. The boxes are `erasing_boxes` (see there for `sampler`); they are
    filled with ERASE_FILL after normalisation, as the reference does. The candidates are drawn at
    once instead of the reference's retry loop, so the step stays one fixed-shape program.
    """
    b, t, h, w, _ = video.shape
    box = erasing_boxes(rng, (b, t, h, w), probability=probability, area_range=area_range,
                        aspect_range=aspect_range, sampler=sampler, attempts=attempts)
    top, left = box["top"][..., None, None], box["left"][..., None, None]
    rows = jnp.arange(h)[None, None, :, None]
    cols = jnp.arange(w)[None, None, None, :]
    inside = ((rows >= top) & (rows < top + box["height"][..., None, None])
              & (cols >= left) & (cols < left + box["width"][..., None, None]))
    mask = inside & box["erase"][..., None, None]
    fill = jnp.asarray(ERASE_FILL, video.dtype)
    return jnp.where(mask[..., None], fill, video)


def random_flip(rng: jax.Array, video: jax.Array) -> jax.Array:
    """Mirror each clip of [B, T, H, W, C] with probability 0.5 (one decision per clip)."""
    flip = jax.random.bernoulli(rng, 0.5, (video.shape[0],))
    return jnp.where(flip[:, None, None, None, None], video[:, :, :, ::-1], video)
