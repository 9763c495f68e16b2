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
    np.testing.assert_array_equal(guard["loss"], [10.0, 0.0, 0.0])  # empty slots hold 0, masked by count
    # 101 > 10 × median 10: dropped, and not remembered.
    diverged, after, metrics = _judge(guard, 101.0, 2.0)
    assert bool(diverged) and float(metrics["diverged"]) == 1.0 and float(metrics["loss_median"]) == 10.0
    assert int(after["count"]) == 1 and np.array_equal(after["loss"], guard["loss"], equal_nan=True)
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


def _sgd_run(config, window=5):
    """A state with the guard's run-time part and a scripted step: w ← w − 1 each update, the reported
    loss the batch's; the RNG and step advance as the real steps do."""
    params = {"w": jnp.zeros(2)}
    state = divergence.attach(create_train_state(config, None, params, {}, jax.random.PRNGKey(0), 10))

    def step(state, batch):
        new = state.replace(params={"w": state.params["w"] - 1.0}, step=state.step + 1,
                            rng=jax.random.split(state.rng)[0])
        skipped = jnp.float32(0.0) if np.isfinite(batch["loss"]) else jnp.float32(1.0)
        return (new if skipped == 0 else state.replace(step=state.step + 1, rng=new.rng)), {
            "loss": batch["loss"], "grad_norm": jnp.float32(1.0), "skipped": skipped}

    return state, divergence.guarded(step, config)


def test_an_exploding_update_is_rolled_back_by_the_next_step():
    config = default.get_config()
    state, guarded = _sgd_run(config)
    w = lambda s: float(s.params["w"][0])  # noqa: E731 — w after n accepted updates is −n
    # Step 0 (loss 2) is judged at the initial parameters and makes update 0: w = −1, pending.
    state, m = guarded(state, {"loss": jnp.float32(2.0)})
    assert w(state) == -1.0 and bool(state.guard["pending"]) and float(m["rolled_back"]) == 0.0
    # Step 1's loss 100 > 10 × 2 is at the parameters update 0 made: update 0 is undone (w back to 0)
    # and step 1's own update dropped; the step counter and RNG still advance.
    state, m = guarded(state, {"loss": jnp.float32(100.0)})
    assert (float(m["diverged"]), float(m["rolled_back"]), float(m["diverged_streak"])) == (1.0, 1.0, 1.0)
    assert w(state) == 0.0 and int(state.step) == 2 and not bool(state.guard["pending"])
    assert int(state.guard["count"]) == 1  # only step 0's loss is remembered
    # Step 2 is at the restored (already accepted) parameters: nothing to accept, so the streak stays;
    # its update is made; step 3 accepts it, which ends the streak.
    state, m = guarded(state, {"loss": jnp.float32(3.0)})
    assert w(state) == -1.0 and float(m["diverged_streak"]) == 1.0
    state, m = guarded(state, {"loss": jnp.float32(2.5)})
    assert w(state) == -2.0 and float(m["diverged_streak"]) == 0.0
    np.testing.assert_array_equal(state.guard["kept"]["params"]["w"], [-1.0, -1.0])
    assert divergence.counters(state) == {"skipped_total": 0, "diverged_total": 1, "nonfinite_streak": 0,
                                          "diverged_streak": 0}


def test_a_nonfinite_loss_rolls_back_too_and_a_probe_judges_without_advancing():
    config = default.get_config()
    state, guarded = _sgd_run(config)
    state, _ = guarded(state, {"loss": jnp.float32(2.0)})  # w = −1, pending
    # NaN at the parameters update 0 made: an overflow looks like this; undone like an explosion.
    state, m = guarded(state, {"loss": jnp.float32(np.nan)})
    assert float(m["skipped"]) == 1.0 and float(m["rolled_back"]) == 1.0 and float(m["nonfinite_streak"]) == 1.0
    assert float(state.params["w"][0]) == 0.0
    state, _ = guarded(state, {"loss": jnp.float32(2.0)})  # update again: w = −1, pending, step 3
    # A probe of the pending update on an exploding batch rolls it back without advancing anything.
    step, rng = int(state.step), np.asarray(state.rng)
    state, m = guarded(divergence.probing(state, jnp.bool_(True)), {"loss": jnp.float32(1e6)})
    assert float(m["rolled_back"]) == 1.0 and float(state.params["w"][0]) == 0.0
    assert int(state.step) == step and np.array_equal(np.asarray(state.rng), rng)
    assert not bool(state.guard["probe"]) and not bool(state.guard["pending"])
    # A probe with nothing pending decides nothing and counts nothing.
    state, m = guarded(divergence.probing(state, jnp.bool_(True)), {"loss": jnp.float32(1e6)})
    assert float(m["diverged"]) == 0.0 and float(state.params["w"][0]) == 0.0
    # An accepted probe keeps the update and makes the state the kept one (nothing pending).
    state, _ = guarded(state, {"loss": jnp.float32(2.0)})
    state, m = guarded(divergence.probing(state, jnp.bool_(True)), {"loss": jnp.float32(2.0)})
    assert float(state.params["w"][0]) == -1.0 and not bool(state.guard["pending"])
    np.testing.assert_array_equal(state.guard["kept"]["params"]["w"], [-1.0, -1.0])
    assert divergence.counters(state)["diverged_total"] == 1 and divergence.counters(state)["skipped_total"] == 1


def test_attach_and_detach_keep_checkpoints_to_the_memory_and_counters_to_the_metadata():
    config = default.get_config()
    state, _ = _sgd_run(config)
    assert set(divergence.detach(state).guard) == {"loss", "grad_norm", "count"}
    again = divergence.attach(divergence.detach(state), {"diverged_total": 4, "diverged_streak": 2})
    assert divergence.counters(again) == {"skipped_total": 0, "diverged_total": 4, "nonfinite_streak": 0,
                                          "diverged_streak": 2}
    # The kept copy does not share buffers with the state (the step donates both).
    assert again.guard["kept"]["params"]["w"] is not again.params["w"]
