"""The divergence guard: an update whose loss or gradient norm explodes without becoming NaN/inf is
skipped, inside the step.

The non-finite guard (common.guard_and_report) cannot see a run whose loss has gone to 1e13: every
number is finite. This one compares each step's loss and gradient norm with the median of the last
`train.divergence_window` *accepted* updates (TrainState.guard) and drops the update when either is
more than `train.divergence_factor` times that median, once `train.divergence_min_history` updates
have been accepted. Dropped updates are not remembered, so a run that has blown up keeps being
compared with its healthy past instead of getting used to the new scale; the loop stops it after
`train.max_consecutive_diverged` in a row (train.py).

Why in the step: the decision is per step, and a host check would need the loss on the host after
every step (a sync the loop otherwise makes once per log interval) and the previous state kept
undonated to roll back to. Here it is one comparison and one select, like the non-finite guard.
The guard assumes losses that are positive, as every loss term here is.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from svreid_jax.state import TrainState


def judge(guard: dict, loss: jax.Array, grad_norm: jax.Array, finite: jax.Array, *, factor: float,
          min_history: int) -> tuple[jax.Array, dict, dict]:
    """(diverged: bool [], the guard memory after this step, metrics).

    guard: TrainState.guard; loss, grad_norm: this step's (replicated) scalars; finite: whether the
    non-finite guard let the update through. A step is diverged when it is finite, at least
    `min_history` updates were accepted before it, and its loss or gradient norm exceeds `factor` ×
    the median of the remembered ones. Accepted steps (finite, not diverged) are remembered in a ring
    of the window's size. factor <= 0 turns the guard off (steps are still remembered).
    metrics: 'diverged' (1.0 when this update was dropped), 'loss_median' (the reference value, NaN
    before the first accepted update).
    """
    filled = jnp.arange(guard["loss"].shape[0]) < guard["count"]
    loss_median = jnp.nanmedian(jnp.where(filled, guard["loss"], jnp.nan))
    grad_median = jnp.nanmedian(jnp.where(filled, guard["grad_norm"], jnp.nan))
    if factor > 0:
        exploded = (loss > factor * loss_median) | (grad_norm > factor * grad_median)
        diverged = finite & (guard["count"] >= min_history) & exploded
    else:
        diverged = jnp.zeros((), bool)
    accept = finite & ~diverged
    slot = guard["count"] % guard["loss"].shape[0]
    remembered = {
        "loss": jnp.where(accept, guard["loss"].at[slot].set(loss.astype(jnp.float32)), guard["loss"]),
        "grad_norm": jnp.where(accept, guard["grad_norm"].at[slot].set(grad_norm.astype(jnp.float32)),
                               guard["grad_norm"]),
        "count": guard["count"] + accept.astype(jnp.int32),
    }
    return diverged, remembered, {"diverged": diverged.astype(jnp.float32), "loss_median": loss_median}


def guarded(train_step: Callable, config) -> Callable:
    """`train_step` with the divergence guard around it: same signature, the update dropped (parameters,
    optimiser, teacher and extra state kept; RNG and step advanced, as the non-finite guard does) when
    `judge` says so, metrics extended with 'diverged' and 'loss_median'. Needs the step's 'loss',
    'grad_norm' and 'skipped' metrics (every variant reports them)."""
    factor = float(config.train.divergence_factor)
    min_history = int(config.train.divergence_min_history)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        new_state, metrics = train_step(state, batch)
        if state.guard is None:  # a TrainState built by hand, without state.create_train_state
            return new_state, metrics
        finite = metrics["skipped"] == 0
        diverged, memory, guard_metrics = judge(state.guard, metrics["loss"], metrics["grad_norm"], finite,
                                                factor=factor, min_history=min_history)
        old = state.replace(rng=new_state.rng, step=new_state.step)
        kept = jax.tree.map(lambda new, prev: jnp.where(diverged, prev, new), new_state, old)
        return kept.replace(guard=memory), {**metrics, **guard_metrics}

    return step
