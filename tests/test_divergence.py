"""The divergence guard (variants/divergence.py): hand-checked decisions, and the wrapper keeping the
old state for a dropped update."""
import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from svreid_jax.state import create_train_state, empty_guard
from svreid_jax.variants import divergence


def _judge(guard, loss, grad_norm=1.0, finite=True, factor=10.0, min_history=1):
    return divergence.judge(guard, jnp.float32(loss), jnp.float32(grad_norm), jnp.bool_(finite), factor=factor,
                            min_history=min_history)


def test_decisions_by_hand():
    guard = empty_guard(3)
    # Nothing remembered: the first update is accepted whatever it is.
    diverged, guard, metrics = _judge(guard, 10.0, 2.0)
    assert not diverged and int(guard["count"]) == 1 and np.isnan(float(metrics["loss_median"]))
    np.testing.assert_array_equal(guard["loss"], [10.0, 0.0, 0.0])  # the count says which slots are filled
    # 101 > 10 × median 10: dropped, and not remembered.
    diverged, after, metrics = _judge(guard, 101.0, 2.0)
    assert bool(diverged) and float(metrics["diverged"]) == 1.0 and float(metrics["loss_median"]) == 10.0
    assert int(after["count"]) == 1 and np.array_equal(after["loss"], guard["loss"])
    # Exactly 10 × the median passes; the memory now holds 10, 100: median 55.
    diverged, guard, _ = _judge(guard, 100.0, 2.0)
    assert not diverged
    # The gradient norm alone: 20.5 > 10 × median(2, 2) = 20.
    diverged, _, _ = _judge(guard, 1.0, 20.5)
    assert bool(diverged)
    # A non-finite update is the other guard's: neither diverged nor remembered.
    diverged, kept, _ = _judge(guard, np.nan, np.inf, finite=False)
    assert not diverged and int(kept["count"]) == 2
    # The ring: the 4th accepted update overwrites the 1st (window 3).
    for loss in (30.0, 40.0):
        _, guard, _ = _judge(guard, loss, 2.0)
    np.testing.assert_array_equal(guard["loss"], [40.0, 100.0, 30.0])
    assert int(guard["count"]) == 4


def test_min_history_and_off_switch():
    guard = empty_guard(5)
    _, guard, _ = _judge(guard, 1.0)
    diverged, guard, _ = _judge(guard, 1000.0, min_history=2)  # only one remembered: not judged yet
    assert not diverged and int(guard["count"]) == 2
    diverged, _, _ = _judge(guard, 1e9, factor=0.0)
    assert not diverged


def test_wrapper_drops_the_update_but_advances_step_and_rng():
    config = default.get_config()
    params = {"w": jnp.ones(2)}
    state = create_train_state(config, None, params, {}, jax.random.PRNGKey(0), 10)

    def step(state, batch):  # an SGD-like update whose reported loss the test chooses
        new = state.replace(params={"w": state.params["w"] - 1.0}, step=state.step + 1,
                            rng=jax.random.split(state.rng)[0])
        return new, {"loss": batch["loss"], "grad_norm": jnp.float32(1.0), "skipped": jnp.float32(0.0)}

    guarded = divergence.guarded(step, config)
    state, metrics = guarded(state, {"loss": jnp.float32(2.0)})
    np.testing.assert_array_equal(state.params["w"], [0.0, 0.0])
    rng_before = np.asarray(state.rng)
    dropped, metrics = guarded(state, {"loss": jnp.float32(21.0)})  # > 10 × 2
    assert float(metrics["diverged"]) == 1.0 and int(dropped.step) == 2
    np.testing.assert_array_equal(dropped.params["w"], [0.0, 0.0])
    assert not np.array_equal(np.asarray(dropped.rng), rng_before)
    assert int(dropped.guard["count"]) == 1
