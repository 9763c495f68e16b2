"""Temporal aggregation of per-frame embeddings.

Now: the temporal average pooling used for the clip embedding (method-spec §3.2: v = mean_T x).

Later (reference variant, method-spec §3.3): the MS-TCN `MultiStageModel` (4 stages of 10 dilated
residual layers on detached frame features, one shared BN1d(64) for the stage sequence features)
belongs in this file, next to `TemporalAverage`, as its own Linen module(s).
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def temporal_average(frames: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """Mean over time. frames: [B, T, D]; optional mask: [B, T] (1 = valid frame) → [B, D].

    With a mask, only valid frames are averaged (a clip with no valid frame gives zeros).
    """
    if frames.ndim != 3:
        raise ValueError(f"temporal_average expects [B, T, D] frames, got shape {frames.shape}")
    if mask is None:
        return jnp.mean(frames, axis=1)
    w = jnp.asarray(mask, frames.dtype)[..., None]
    return jnp.sum(frames * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)


class TemporalAverage(nn.Module):
    """Linen wrapper of `temporal_average` (no parameters)."""

    @nn.compact
    def __call__(self, frames: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
        return temporal_average(frames, mask)


# ---------------------------------------------------------------------------------------------
# MS-TCN temporal stages (reference variant): to be added here.
