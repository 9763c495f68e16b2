"""Train state (student, optimiser, EMA teacher, RNG) and the optimiser built from the config."""
from __future__ import annotations

from typing import Any, ClassVar

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
    variant_state: the state a variant keeps beyond the student and teacher (variants.Variant.init_state),
      None for the paper variant. The reference variant's: the MS-TCN + discriminator variables and
      their Adam state, the loss weights a_i with their accumulated gradient and Adam state, and
      steps_per_epoch (variants/reference.py). The plus variant's: the target's pseudo-identities and
      the cluster or camera-aware proxy memory (variants/plus.py). Part of the pytree, so checkpoints
      and resume include it; checkpoints that stored it as `reference` restore too (SAVED_AS).
    guard: the divergence guard's memory (variants/divergence.py): the losses and gradient norms of
      the last accepted updates, {'loss', 'grad_norm': float32 [window] (NaN where empty),
      'count': int32 []}. In the state so that the guard decides inside the step and resumes exactly.
    """

    batch_stats: Any = None
    ema_params: Any = None
    ema_batch_stats: Any = None
    rng: jax.Array | None = None
    variant_state: Any = None
    guard: Any = None

    # Fields that earlier checkpoints stored under another name: field → the name on disk
    # (utils/checkpointing.Checkpointer restores those into today's fields).
    SAVED_AS: ClassVar[dict[str, str]] = {"variant_state": "reference"}


def empty_guard(window: int) -> dict[str, jax.Array]:
    """The divergence guard's memory before any update (TrainState.guard)."""
    if window < 1:
        raise ValueError(f"train.divergence_window={window}: expected at least 1 step")
    # Zeros, not NaN, for the empty slots: a multi-process device_put checks that every process holds
    # equal values, and NaN != NaN. Slots at or past `count` are masked out where they are read.
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


def _is_schedule_state(x: Any) -> bool:
    return isinstance(x, optax.ScaleByScheduleState)


def schedule_count(opt_state: Any) -> jax.Array:
    """The step count the learning-rate schedule reads from an optimiser state of `make_optimizer`."""
    counts = [s.count for s in jax.tree.leaves(opt_state, is_leaf=_is_schedule_state) if _is_schedule_state(s)]
    if len(counts) != 1:
        raise ValueError(f"expected one learning-rate schedule in the optimiser state, found {len(counts)}")
    return counts[0]


def with_schedule_count_of(kept: Any, advanced: Any) -> Any:
    """`kept` (an optimiser state) with the learning-rate schedule's count taken from `advanced`.

    A skipped update keeps the optimiser's moments and Adam's bias-correction count (no update was
    made) but its batch was consumed, so the schedule moves on with the step counter: the learning
    rate then stays lr(state.step), in step with the epochs the loop counts (docs/METHOD.md §6.5).
    """
    return jax.tree.map(lambda k, a: a if _is_schedule_state(k) else k, kept, advanced, is_leaf=_is_schedule_state)


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
                       variant_state: Any = None) -> TrainState:
    """A fresh state; the teacher starts as a copy of the student (separate buffers, so the state
    can be donated). `variant_state`: the variant's own state (TrainState.variant_state)."""
    tx = make_optimizer(config, params, steps_per_epoch)
    return TrainState.create(
        apply_fn=apply_fn,
        params=params,
        tx=tx,
        batch_stats=batch_stats,
        ema_params=jax.tree.map(jnp.copy, params),
        ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
        rng=rng,
        variant_state=variant_state,
        guard=empty_guard(config.train.divergence_window),
    )
