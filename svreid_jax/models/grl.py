"""Gradient reversal layer and its DANN coefficient schedule (docs/METHOD.md §3.4–§3.5).

`gradient_reversal(x, beta)` is the identity going forward; going backward it multiplies the
incoming gradient by −beta. `beta` is an ordinary (possibly traced) argument, so one compiled step
serves every value of the schedule; it receives a zero cotangent, i.e. it is never trained.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp


@jax.custom_vjp
def _reverse(x: jax.Array, beta: jax.Array) -> jax.Array:
    return x


def _reverse_fwd(x, beta):
    return x, beta


def _reverse_bwd(beta, g):
    # Scale in (at least) float32 so a bfloat16 gradient is not multiplied by a rounded beta.
    compute = jnp.promote_types(g.dtype, jnp.float32)
    dx = (-beta.astype(compute) * g.astype(compute)).astype(g.dtype)
    return dx, jnp.zeros_like(beta)


_reverse.defvjp(_reverse_fwd, _reverse_bwd)


def gradient_reversal(x: jax.Array, beta: Any) -> jax.Array:
    """Identity forward; backward sends `-beta * g` to `x` and nothing to `beta`.

    Args:
      x: any floating-point array (e.g. [B, D] embeddings).
      beta: scalar coefficient, a Python number or a (traced) JAX scalar.
    """
    beta = jax.lax.stop_gradient(jnp.asarray(beta, jnp.float32))
    if beta.ndim != 0:
        raise ValueError(f"gradient_reversal: beta must be a scalar, got shape {beta.shape}")
    return _reverse(x, beta)


def grl_beta(step: Any, max_steps: Any) -> Any:
    """DANN schedule β = 2 / (1 + exp(−10·step / max_steps)) − 1, rising from 0 towards 1.

    With max_steps = 20000: step 1k → 0.245, 2k → 0.462, 5k → 0.848 (docs/METHOD.md §3.5). Python
    numbers give a Python float; anything else (e.g. the train state's int32 step) a float32 array.
    """
    if isinstance(step, numbers.Real) and isinstance(max_steps, numbers.Real):
        return 2.0 / (1.0 + math.exp(-10.0 * float(step) / float(max_steps))) - 1.0
    p = jnp.asarray(step, jnp.float32) / jnp.asarray(max_steps, jnp.float32)
    return 2.0 / (1.0 + jnp.exp(-10.0 * p)) - 1.0
