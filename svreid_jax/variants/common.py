"""Pieces every variant's train step is built from, written once: clip preparation, the student and
teacher forwards, the update norm, and the non-finite guard with the metrics every step reports.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from svreid_jax.data import augment
from svreid_jax.state import TrainState, with_schedule_count_of
from svreid_jax.variants import terms as terms_lib


def check_config(config) -> None:
    """The settings every variant's step reads, checked before training (one line naming the field)."""
    if config.augment.erasing_sampler not in augment.ERASING_SAMPLERS:
        raise ValueError(f"config.augment.erasing_sampler={config.augment.erasing_sampler!r}; expected one of "
                         f"{augment.ERASING_SAMPLERS}")
    terms_lib.check_config(config)


def prepare_clips(video: jax.Array, rng: jax.Array, config) -> jax.Array:
    """uint8 clips [B,T,H,W,3] → normalised float32, then Random Erasing (train only)."""
    x = augment.normalize(video)
    if config.augment.erasing_probability > 0:
        x = augment.random_erasing(rng, x, probability=config.augment.erasing_probability,
                                   sampler=config.augment.erasing_sampler)
    return x


def consistency_rampup(step: jax.Array, rampup_steps: int) -> jax.Array:
    """exp(−5 (1 − step/rampup)²) up to rampup_steps, then 1 (Tarvainen & Valpola's schedule)."""
    phase = 1.0 - jnp.clip(jnp.asarray(step, jnp.float32) / rampup_steps, 0.0, 1.0)
    return jnp.exp(-5.0 * phase * phase)


def student_forward(model, params, batch_stats, clips: jax.Array, beta, dropout_key: jax.Array):
    """One train-mode forward of the student: (outputs dict, updated batch_stats).

    Source and target run as separate forwards (as in the authors' code), so BN statistics are
    updated once per domain, source first.
    """
    out, new_vars = model.apply({"params": params, "batch_stats": batch_stats}, clips, train=True,
                                grl_beta=beta, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
    return out, new_vars["batch_stats"]


def teacher_forward(model, state: TrainState, video: jax.Array, target: jax.Array, augment_key: jax.Array,
                    dropout_key: jax.Array, config) -> tuple[dict, Any]:
    """The EMA teacher on the target clips: (outputs without gradient, its updated batch_stats).

    video: the uint8 target clips [B',T,H,W,3]; target: the student's prepared view of them. The
    teacher runs in train mode (its BN sees target batch statistics, like the authors' code). With
    `adaptation.teacher_augment` it sees its own flip and erasing of each clip, so agreeing with it
    asks the student for invariance instead of echoing its own view (docs/METHOD.md §5).
    """
    teacher_input = target
    if config.adaptation.teacher_augment:
        k_flip, k_erase = jax.random.split(augment_key)
        teacher_input = prepare_clips(augment.random_flip(k_flip, video), k_erase, config)
    out, new_vars = model.apply({"params": state.ema_params, "batch_stats": state.ema_batch_stats}, teacher_input,
                                train=True, grl_beta=0.0, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
    return jax.lax.stop_gradient(out), new_vars["batch_stats"]


def global_norm(tree: Any) -> jax.Array:
    """√(Σ g²) over every leaf of a gradient tree."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))


def guard_and_report(state: TrainState, new_state: TrainState, rng: jax.Array, total: jax.Array,
                     grad_norm: jax.Array, metrics: dict) -> tuple[TrainState, dict]:
    """The non-finite guard and the metrics tail every variant shares.

    A NaN/inf loss or gradient keeps the old parameters, optimiser and teacher so one bad batch cannot
    poison the run; the loop counts these and stops after too many in a row. The RNG and the step
    still advance: the step counts consumed batches, which the loop, the data position and the
    checkpoint labels all follow (a lagging step would resume one batch early); so does the
    learning-rate schedule's count, so the rate stays lr(state.step).
    Returns (the state to keep, metrics with 'grad_norm' and 'skipped' (1.0 when the update was dropped)).
    """
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
    skipped = state.replace(rng=rng, step=state.step + 1,
                            opt_state=with_schedule_count_of(state.opt_state, new_state.opt_state))
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, skipped)
    return kept, {**metrics, "grad_norm": grad_norm, "skipped": 1.0 - finite.astype(jnp.float32)}
