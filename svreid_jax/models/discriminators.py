"""Domain discriminators behind a gradient reversal layer (docs/METHOD.md §3.4).

The reference uses GRL(β) → Linear → ReLU → Dropout(0.5) → Linear(·, 2), once per frame and once per
sequence. The same module serves both here; it acts on the last axis, so frames [B, T, D] and
clips [B, D] go through unchanged leading dimensions. Domain labels: source 0, target 1.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from svreid_jax.models.grl import gradient_reversal
from svreid_jax.models.resnet import torch_default_bias_init, torch_default_kernel_init


class DomainDiscriminator(nn.Module):
    """GRL(beta) → Dense(hidden) → ReLU → Dropout → Dense(num_domains), on the last axis.

    Computed in float32 with PyTorch's default Linear initialisation. Dropout draws from the
    'dropout' rng when `train` is true.
    """

    hidden: int
    num_domains: int = 2
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, *, beta: Any, train: bool) -> jax.Array:
        """x: [..., D] → domain logits [..., num_domains] (float32)."""
        x = gradient_reversal(jnp.asarray(x, jnp.float32), beta)
        x = nn.Dense(self.hidden, kernel_init=torch_default_kernel_init,
                     bias_init=torch_default_bias_init(x.shape[-1]), name="fc1")(x)
        x = nn.relu(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_domains, kernel_init=torch_default_kernel_init,
                        bias_init=torch_default_bias_init(self.hidden), name="fc2")(x)
