"""The divergence guard: an update after which the loss or gradient norm explodes is rolled back, inside
the step; the last accepted state is what the run keeps (docs/ARCHITECTURE.md, "The divergence guard").

A step's loss and gradient norm are computed at the parameters it receives, so they judge the update
that *produced* those parameters (the previous step's), not the one the step is about to make. The guard
therefore keeps the last accepted state (`kept`: parameters, optimiser, BN statistics, teacher and the
variant's state) next to the candidate, and a step whose loss or gradient norm is rejected

* rolls the candidate back to `kept` (the update that caused the explosion is undone), and
* drops its own update, computed at the exploded parameters.

A step that is not rejected accepts the candidate (`kept` becomes it) and makes its own update, which the
next step judges in turn. The rules:

* relative: a finite loss or gradient norm more than `train.divergence_factor` × the median of the last
  `train.divergence_window` accepted ones (TrainState.guard), once `train.divergence_min_history` are
  remembered. The first step's loss is that of the parameters before any update, so with the default
  min_history 1 every update, the first one included, is judged this way;
* absolute, from the first step on: a NaN/inf loss or gradient (the non-finite guard,
  common.guard_and_report) also rolls the candidate back, since an update can overflow the parameters
  without its own gradient being non-finite.

Rejected values are not remembered, so a run that has blown up keeps being compared with its healthy
past. The loop stops a run after `train.max_consecutive_diverged` explosions (or
`train.max_consecutive_nonfinite` non-finite steps) without an accepted update between them (the
`*_streak` metrics). The last update of a run, and the one before a checkpoint, an evaluation or an
epoch hook, has no next step to judge it: the loop *probes* it (the step on the last batch with
`guard['probe']` set: judged, nothing advanced, no new update), so a saved or evaluated state is always
an accepted one.

The guard memory (`loss`, `grad_norm`, `count`) is in the checkpoints; the run-time part (`RUNTIME`:
the kept state, the flags and the counters) is added by `attach` when the loop starts and removed by
`detach` before a save, so checkpoints stay the size of one state. The counters go to the checkpoint's
metadata (`counters`). A TrainState built by hand (no run-time part) keeps the input state of a rejected
step instead: there is nothing to roll back to.

Why in the step: the decision is per step, and a host check would need the loss on the host after
every step (a sync the loop otherwise makes once per log interval). Here it is one comparison and a few
selects. The guard assumes losses that are positive, as every loss term here is.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from svreid_jax.state import TrainState, with_schedule_count_of

MEMORY = ("loss", "grad_norm", "count")  # the part of TrainState.guard that checkpoints hold
KEPT = ("params", "opt_state", "batch_stats", "ema_params", "ema_batch_stats", "variant_state")
COUNTERS = ("skipped_total", "diverged_total", "nonfinite_streak", "diverged_streak")
RUNTIME = ("kept", "pending", "probe", *COUNTERS)


def judge(guard: dict, loss: jax.Array, grad_norm: jax.Array, finite: jax.Array, *, factor: float,
          min_history: int) -> tuple[jax.Array, dict, dict]:
    """(diverged: bool [], the guard memory after this step, metrics).

    guard: TrainState.guard (its MEMORY part is read); loss, grad_norm: this step's (replicated) scalars,
    at the parameters the step received; finite: whether the non-finite guard let the update through. A
    step is diverged when it is finite, at least `min_history` values were accepted before it, and its
    loss or gradient norm exceeds `factor` × the median of the remembered ones. Accepted steps (finite,
    not diverged) are remembered in a ring of the window's size. factor <= 0 turns the guard off (steps
    are still remembered).
    metrics: 'diverged' (1.0 when this step was rejected as exploded), 'loss_median' (the reference
    value, NaN before the first accepted step).
    """
    filled = jnp.arange(guard["loss"].shape[0]) < guard["count"]  # slots holding an accepted update
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


def _fields(state: TrainState) -> dict[str, Any]:
    return {name: getattr(state, name) for name in KEPT}


def _select(pred: jax.Array, a: Any, b: Any) -> Any:
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def attach(state: TrainState, counters: dict[str, int] | None = None) -> TrainState:
    """`state` as the loop runs it: TrainState.guard with the run-time part (RUNTIME): a copy of the state
    as the last accepted one, nothing pending, and the counters (`counters`, e.g. from a checkpoint's
    metadata; None keeps those `state` already carries, or starts at 0). Call it again after anything
    outside the step changes the state (the epoch hook), so that a rollback cannot undo that change."""
    if state.guard is None:
        return state
    memory = {k: state.guard[k] for k in MEMORY}
    if counters is None:
        counts = {k: state.guard.get(k, jnp.zeros((), jnp.int32)) for k in COUNTERS}
    else:
        counts = {k: jnp.asarray(int(counters.get(k, 0)), jnp.int32) for k in COUNTERS}
    # Copies: the step donates its input, and the kept state must not share buffers with the candidate.
    kept = jax.tree.map(jnp.copy, _fields(state))
    like = state.guard["count"]
    # Each its own buffer: the step donates them all, and one buffer may be donated once.
    pending, probe = jnp.zeros_like(like, dtype=bool), jnp.zeros_like(like, dtype=bool)
    counts = {k: jnp.zeros_like(like) + v for k, v in counts.items()}
    return state.replace(guard={**memory, "kept": kept, "pending": pending, "probe": probe, **counts})


def detach(state: TrainState) -> TrainState:
    """`state` with TrainState.guard reduced to what checkpoints hold (MEMORY)."""
    if state.guard is None or "kept" not in state.guard:
        return state
    return state.replace(guard={k: state.guard[k] for k in MEMORY})


def forget_history(state: TrainState) -> TrainState:
    """`state` with the guard's memory of accepted losses and gradient norms emptied (counters and the
    run-time part kept). For a loss that changes definition mid-run (plus's first clustering epoch adds
    its memory terms): judged against the median of the old definition, the new loss would read as an
    explosion. The next `train.divergence_min_history` accepted steps start the new median unjudged by
    the relative rule; the non-finite rule judges them as always."""
    if state.guard is None:
        return state
    emptied = {k: jnp.zeros_like(state.guard[k]) for k in MEMORY}
    return state.replace(guard={**state.guard, **emptied})


def counters(state: TrainState) -> dict[str, int]:
    """The guard's counters on the host: 'skipped_total' (non-finite steps), 'diverged_total' (exploded
    steps), and the streaks of each since the last accepted update (0 for a state without them)."""
    guard = state.guard or {}
    return {k: int(jax.device_get(guard[k]).reshape(-1)[0]) if k in guard else 0 for k in COUNTERS}


def probing(state: TrainState, flag: jax.Array) -> TrainState:
    """`state` with guard['probe'] set to `flag` (placed like the state's scalars): the next step only
    judges the pending update (see the module docstring)."""
    return state.replace(guard={**state.guard, "probe": flag})


def guarded(train_step: Callable, config) -> Callable:
    """`train_step` with the divergence guard around it: same signature; metrics extended with
    'diverged', 'loss_median', 'rolled_back' (1.0 when the update before this step was undone) and, with
    the run-time part (`attach`), 'diverged_streak' and 'nonfinite_streak'. A rejected step keeps the RNG
    and step counter it advanced (as the non-finite guard does), and the learning-rate schedule's count
    with them. Needs the step's 'loss', 'grad_norm' and 'skipped' metrics (every variant reports them)."""
    factor = float(config.train.divergence_factor)
    min_history = int(config.train.divergence_min_history)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        new_state, metrics = train_step(state, batch)
        if state.guard is None:  # a TrainState built by hand, without state.create_train_state
            return new_state, metrics
        finite = metrics["skipped"] == 0
        diverged, memory, guard_metrics = judge(state.guard, metrics["loss"], metrics["grad_norm"], finite,
                                                factor=factor, min_history=min_history)
        if "kept" not in state.guard:
            return _without_kept(state, new_state, diverged, memory, {**metrics, **guard_metrics})
        return _with_kept(state, new_state, finite, diverged, memory, {**metrics, **guard_metrics})

    return step


def _advanced(fields: dict, state: TrainState, advanced: TrainState) -> TrainState:
    """`state` holding `fields`, with the RNG, step and schedule count of `advanced`."""
    return state.replace(**{**fields, "opt_state": with_schedule_count_of(fields["opt_state"], advanced.opt_state)},
                         rng=advanced.rng, step=advanced.step)


def _without_kept(state, new_state, diverged, memory, metrics):
    """No kept state to roll back to: a rejected step keeps its input."""
    kept = _select(diverged, _advanced(_fields(state), state, new_state), new_state)
    return kept.replace(guard=memory), {**metrics, "rolled_back": jnp.zeros((), jnp.float32)}


def _with_kept(state, new_state, finite, diverged, memory, metrics):
    guard = state.guard
    rejected = diverged | ~finite
    pending, probe = guard["pending"], guard["probe"]
    # The last accepted state after this step: the candidate, unless rejected. A candidate that is not
    # pending is the kept state itself (after a rollback, a probe, or attach), so either is right then.
    kept = _select(rejected, guard["kept"], _fields(state))
    # A rejected step and a probe continue from the kept state; a probe advances nothing.
    clock = _select(probe, state, new_state)
    held = _advanced(kept, state, clock)
    out = _select(~probe & ~rejected, new_state, held)
    counted = ~probe | pending  # a probe with nothing pending decides nothing
    nonfinite, exploded = ~finite & counted, diverged & counted
    committed = pending & ~rejected
    zero = jnp.zeros_like(guard["count"])
    new_guard = {
        **{k: jnp.where(probe, guard[k], memory[k]) for k in MEMORY},  # a probe's loss is not remembered
        "kept": kept, "pending": ~probe & ~rejected, "probe": jnp.zeros_like(probe),
        "skipped_total": guard["skipped_total"] + nonfinite, "diverged_total": guard["diverged_total"] + exploded,
        "nonfinite_streak": jnp.where(committed, zero, guard["nonfinite_streak"] + nonfinite),
        "diverged_streak": jnp.where(committed, zero, guard["diverged_streak"] + exploded),
    }
    f32 = jnp.float32
    return out.replace(guard=new_guard), {
        **metrics, "skipped": nonfinite.astype(f32), "diverged": exploded.astype(f32),
        "rolled_back": (rejected & pending & counted).astype(f32),
        "diverged_streak": new_guard["diverged_streak"].astype(f32),
        "nonfinite_streak": new_guard["nonfinite_streak"].astype(f32)}
