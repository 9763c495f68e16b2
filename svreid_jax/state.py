"""Train state (student, optimiser, EMA teacher, RNG) and the optimiser built from the config."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
    """Student parameters and optimiser (from flax), plus:

    batch_stats: the student's BatchNorm running statistics.
    ema_params / ema_batch_stats: the mean teacher. Its parameters are an EMA of the student's; its
      BN statistics come from its own train-mode forwards on target clips.
    rng: the key that drives dropout, erasing and k-means; split every step.
    reference: None in the paper variant; in the reference variant the extra state of the authors'
      training (svreid_jax.variants.reference.init_reference_state): the MS-TCN + discriminator
      variables and their Adam state, the loss weights a_i with their accumulated gradient and Adam
      state, and steps_per_epoch. Part of the pytree, so checkpoints and resume include it.
    guard: the divergence guard's memory (variants/divergence.py): the losses and gradient norms of
      the last accepted updates, {'loss', 'grad_norm': float32 [window], 'count': int32 []} (a ring:
      the first min(count, window) slots are filled). In the state so that the guard decides inside
      the step and resumes exactly.
    """

    batch_stats: Any = None
    ema_params: Any = None
    ema_batch_stats: Any = None
    rng: jax.Array | None = None
    reference: Any = None
    guard: Any = None


def empty_guard(window: int) -> dict[str, jax.Array]:
    """The divergence guard's memory before any update (TrainState.guard)."""
    if window < 1:
        raise ValueError(f"train.divergence_window={window}: expected at least 1 step")
    # Zeros, not NaN, in the empty slots: a multi-host device_put checks that every process passes the
    # same values, and NaN != NaN.
    return {"loss": jnp.zeros((window,), jnp.float32), "grad_norm": jnp.zeros((window,), jnp.float32),
            "count": jnp.zeros((), jnp.int32)}


def ema_decay(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """Teacher decay at a step. With warm-up, min(1 − 1/(step+1), decay) as in mean teacher, so the
    teacher follows the student closely while it is still random."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(1.0 - 1.0 / (step + 1.0), decay)


def ema_update(teacher: Any, student: Any, decay: jax.Array) -> Any:
    """θ_T ← decay·θ_T + (1 − decay)·θ_S, leaf by leaf."""
    return jax.tree.map(lambda t, s: decay * t + (1.0 - decay) * s, teacher, student)


def _decay_mask(params: Any, decay_bn_and_bias: bool) -> Any:
    """True where weight decay applies: kernels only, unless the config asks for all leaves."""
    flat = flax.traverse_util.flatten_dict(params)
    mask = {path: decay_bn_and_bias or path[-1] == "kernel" for path in flat}
    return flax.traverse_util.unflatten_dict(mask)


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up, then ×gamma at each epoch in `lr_milestones` (MultiStepLR stepped per epoch)."""
    opt = config.optimizer
    boundaries = {int(m) * steps_per_epoch: opt.lr_gamma for m in opt.lr_milestones}
    decay = optax.piecewise_constant_schedule(opt.learning_rate, boundaries)
    warmup_steps = int(opt.warmup_epochs * steps_per_epoch)
    if warmup_steps <= 0:
        return decay
    warm = optax.linear_schedule(opt.learning_rate * opt.warmup_factor, opt.learning_rate, warmup_steps)
    return lambda step: jnp.where(step < warmup_steps, warm(step), decay(step))


OPTIMIZERS = ("adam_l2", "adamw")  # config.optimizer.name


def make_optimizer(config, params: Any, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam with L2 added to the gradient (the reference's torch Adam) or AdamW (decoupled decay)."""
    opt = config.optimizer
    schedule = learning_rate_schedule(config, steps_per_epoch)
    mask = _decay_mask(params, opt.decay_bn_and_bias)
    if opt.name == "adam_l2":
        return optax.chain(
            optax.add_decayed_weights(opt.weight_decay, mask=mask),
            optax.scale_by_adam(b1=opt.beta1, b2=opt.beta2, eps=opt.eps),
            optax.scale_by_learning_rate(schedule),
        )
    if opt.name == "adamw":
        return optax.adamw(schedule, b1=opt.beta1, b2=opt.beta2, eps=opt.eps,
                           weight_decay=opt.weight_decay, mask=mask)
    raise ValueError(f"config.optimizer.name={opt.name!r}; expected 'adam_l2' or 'adamw'")


def create_train_state(config, apply_fn, params, batch_stats, rng: jax.Array, steps_per_epoch: int,
                       reference: Any = None) -> TrainState:
    """A fresh state; the teacher starts as a copy of the student (separate buffers, so the state
    can be donated). `reference`: the reference variant's extra state (TrainState.reference)."""
    tx = make_optimizer(config, params, steps_per_epoch)
    return TrainState.create(
        apply_fn=apply_fn,
        params=params,
        tx=tx,
        batch_stats=batch_stats,
        ema_params=jax.tree.map(jnp.copy, params),
        ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
        rng=rng,
        reference=reference,
        guard=empty_guard(config.train.divergence_window),
    )
