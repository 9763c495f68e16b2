"""One train step: parameters move, the teacher follows the EMA formula, no retracing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from svreid_jax import parallel, train, variants
from svreid_jax.variants import terms
from svreid_jax.models import reid
from svreid_jax.state import create_train_state, ema_decay, schedule_count, with_schedule_count_of

B, T, H, W = 8, 4, 32, 16


def _config(**loss):
    c = demo.get_config()
    c.data.height, c.data.width = H, W
    c.model.width = 8
    c.adaptation.kmeans_clusters = 2
    for k, v in loss.items():
        setattr(c.loss, k, v)
    return c


def _setup(config):
    model = reid.ReIDNet(num_classes=4, backbone={"depth": "tiny", "width": 8}, disc_hidden=16)
    params, batch_stats = reid.init_model(model, jax.random.PRNGKey(0), (1, T, H, W, 3))
    state = create_train_state(config, model.apply, params, batch_stats, jax.random.PRNGKey(1), steps_per_epoch=10)
    return model, state


def _batch(seed):
    rng = np.random.default_rng(seed)
    return {
        "source": {"video": rng.integers(0, 255, (B, T, H, W, 3), dtype=np.uint8),
                   "pid": np.repeat(np.arange(B // 4), 4).astype(np.int32)},
        "target": {"video": rng.integers(0, 255, (B, T, H, W, 3), dtype=np.uint8),
                   "camid": np.arange(B, dtype=np.int32) % 3},
    }


@pytest.fixture(scope="module")
def compiled():
    """One jitted full step (mesh-sharded), shared by the tests below: compiling it takes ~10 s on CPU."""
    config = _config()
    model, state = _setup(config)
    traces = []

    def counted(state, batch):
        traces.append(1)
        return variants.make_train_step(model, config)(state, batch)

    mesh = parallel.data_mesh()
    return config, mesh, parallel.replicate(state, mesh), parallel.jit_train_step(counted, mesh, donate=False), traces


@pytest.mark.slow  # about 40 s: compiles the paper step; the default stage keeps its 15-minute budget
def test_train_step_moves_params_and_teacher_follows_ema_and_compiles_once(compiled):
    config, mesh, state, step, traces = compiled
    # A few steps with changing data, so the EMA decay is past its warm-up value of 0.
    for i in range(3):
        before = state
        state, metrics = step(state, parallel.shard_batch(_batch(i), mesh))
        jax.block_until_ready(metrics["loss"])
    assert len(traces) == 1, "the train step was traced more than once"
    assert int(state.step) == 3
    for key in ("ce", "triplet", "frame_domain", "clip_domain", "consistency_ce", "consistency_dist"):
        assert np.isfinite(float(metrics[key])), key
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), before.params, state.params)
    assert max(jax.tree.leaves(moved)) > 0
    decay = float(ema_decay(2, config.adaptation.ema_decay, config.adaptation.ema_warmup))
    assert decay == pytest.approx(2 / 3)
    expected = jax.tree.map(lambda t, s: decay * t + (1 - decay) * s, before.ema_params, state.params)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(state.ema_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert float(metrics["skipped"]) == 0.0


@pytest.mark.slow  # shares the compiled paper step (about 40 s); the default stage keeps its 15-minute budget
def test_nonfinite_update_is_skipped(compiled):
    _, mesh, state, step, _ = compiled
    poisoned = state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
    new, metrics = step(poisoned, parallel.shard_batch(_batch(0), mesh))
    assert float(metrics["skipped"]) == 1.0
    assert int(new.step) == int(poisoned.step) + 1  # the batch was consumed
    assert not np.array_equal(np.asarray(new.rng), np.asarray(poisoned.rng))
    # The learning-rate schedule moves on with the step (lr(state.step) stays in step with the epochs);
    # everything else of the optimiser (moments, Adam's bias-correction count) stays as it was.
    assert int(schedule_count(new.opt_state)) == int(new.step) == int(schedule_count(poisoned.opt_state)) + 1
    rest = with_schedule_count_of(new.opt_state, poisoned.opt_state)
    for kept, old in zip(jax.tree.leaves((new.params, rest, new.ema_params)),
                         jax.tree.leaves((poisoned.params, poisoned.opt_state, poisoned.ema_params))):
        np.testing.assert_array_equal(np.asarray(kept), np.asarray(old))


@pytest.mark.slow  # about 15 s: another compile of the step; the default stage keeps its 15-minute budget
def test_source_only_skips_target_terms():
    config = _config(frame_domain=0.0, clip_domain=0.0, consistency_ce=0.0, consistency_dist=0.0, camera_alignment=0.0)
    model, state = _setup(config)
    assert [t.name for t in terms.active(config)] == ["ce", "triplet"] and not variants.uses_target(config)
    _, metrics = jax.jit(variants.make_train_step(model, config))(state, _batch(0))
    assert "frame_domain" not in metrics and "consistency_ce" not in metrics


@pytest.mark.slow  # its own compile of the step with the projection head
def test_infonce_term_runs_in_the_step():
    config = _config()
    config.loss.infonce = 0.001
    config.loss.frame_domain = config.loss.clip_domain = 0.0
    config.loss.consistency_ce = config.loss.consistency_dist = 0.0
    model = reid.ReIDNet(num_classes=4, backbone={"depth": "tiny", "width": 8}, disc_hidden=16,
                         infonce_projection=True)
    params, batch_stats = reid.init_model(model, jax.random.PRNGKey(0), (1, T, H, W, 3))
    state = create_train_state(config, model.apply, params, batch_stats, jax.random.PRNGKey(1), steps_per_epoch=10)
    _, metrics = jax.jit(variants.make_train_step(model, config))(state, _batch(0))
    assert np.isfinite(float(metrics["infonce"])) and float(metrics["infonce"]) > 0


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_settings_a_step_cannot_run_are_refused_before_training(tmp_path, variant):
    config = demo.get_config(f"{variant},micro")
    config.loss.infonce, config.batch.num_instances = 0.001, 1
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match="^config.loss.infonce=0.001 needs config.batch.num_instances ≥ 2 "
                                         r"\(InfoNCE's positives are the other clips of an identity\); got 1$"):
        train.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()  # refused before any data was generated or read
    config = demo.get_config(f"{variant},micro")
    config.augment.erasing_sampler = "linear"
    with pytest.raises(ValueError, match=r"^config.augment.erasing_sampler='linear'; expected one of "
                                         r"\('log_aspect', 'authors'\)$"):
        variants.check_config(config)
