"""Optimiser and EMA teacher arithmetic."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import default
from svreid_jax import state as state_lib


def test_ema_decay_warmup_ramp():
    got = [float(state_lib.ema_decay(s, 0.99, True)) for s in (0, 1, 2, 99, 500)]
    np.testing.assert_allclose(got, [0.0, 0.5, 2 / 3, 0.99, 0.99], rtol=1e-6)
    assert float(state_lib.ema_decay(0, 0.9, False)) == pytest.approx(0.9)


def test_ema_update_formula():
    teacher = {"w": jnp.array([1.0, 2.0])}
    student = {"w": jnp.array([3.0, 6.0])}
    out = state_lib.ema_update(teacher, student, 0.75)
    np.testing.assert_allclose(np.asarray(out["w"]), [1.5, 3.0])


def _config(**opt):
    c = default.get_config()
    for k, v in opt.items():
        setattr(c.optimizer, k, v)
    return c


def test_schedule_multistep_per_epoch_and_warmup():
    c = _config(learning_rate=1.0, lr_milestones=(2, 4), lr_gamma=0.1, warmup_epochs=1.0, warmup_factor=0.1)
    lr = state_lib.learning_rate_schedule(c, steps_per_epoch=10)
    np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 10, 19, 20, 39, 40)],
                               [0.1, 0.55, 1.0, 1.0, 0.1, 0.1, 0.01], rtol=1e-5)


def test_adam_l2_adds_decay_to_gradient_before_adam():
    # torch Adam with weight_decay: g' = g + wd·θ, then Adam. First step of Adam moves by lr·sign(g').
    params = {"dense": {"kernel": jnp.array([1.0, -1.0]), "bias": jnp.array([1.0])}}
    c = _config(name="adam_l2", learning_rate=0.1, weight_decay=0.5, decay_bn_and_bias=False, lr_milestones=())
    tx = state_lib.make_optimizer(c, params, steps_per_epoch=1)
    grads = {"dense": {"kernel": jnp.array([-0.2, 0.1]), "bias": jnp.array([-0.2])}}
    updates, _ = tx.update(grads, tx.init(params), params)
    # kernel: g' = (-0.2+0.5, 0.1-0.5) = (0.3, -0.4) → update −0.1·sign; bias is not decayed: g = −0.2 → +0.1
    np.testing.assert_allclose(np.asarray(updates["dense"]["kernel"]), [-0.1, 0.1], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(updates["dense"]["bias"]), [0.1], rtol=1e-4)


def test_unknown_optimizer_is_named():
    c = _config(name="sgd")
    with pytest.raises(ValueError, match="config.optimizer.name='sgd'"):
        state_lib.make_optimizer(c, {"w": jnp.ones(1)}, 1)


def test_train_state_names_the_variant_state_for_what_it_holds():
    """The variant's own state (reference: the MS-TCN and loss weights; plus: the cluster memory) is
    `variant_state`; checkpoints that stored it as `reference` map onto it (tests/utils/test_utils.py)."""
    import dataclasses

    from svreid_jax.state import TrainState
    names = [f.name for f in dataclasses.fields(TrainState)]
    assert "variant_state" in names and "reference" not in names
    assert TrainState.SAVED_AS == {"variant_state": "reference"}
