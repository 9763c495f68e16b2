"""The adaptive parts of the paper step, pinned: the gradient reversal's exact factor, the β schedule
the step uses, the weighted sum of the terms with the consistency ramp, and what the teacher sees.

Each test fails if its piece is bypassed (β passed as 0 or ignored, weights or ramp dropped,
teacher_augment without effect)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from svreid_jax import losses, variants
from svreid_jax.data import augment
from svreid_jax.models import reid
from svreid_jax.state import create_train_state
from svreid_jax.variants import common

B, T, H, W = 8, 4, 32, 16


def _config(**loss):
    c = demo.get_config()
    c.data.height, c.data.width = H, W
    c.adaptation.kmeans_clusters = 2
    c.augment.erasing_probability = 0.0
    for k, v in loss.items():
        setattr(c.loss, k, v)
    return c


def _model():
    return reid.ReIDNet(num_classes=4, backbone={"depth": "tiny", "width": 8}, disc_hidden=16, disc_dropout=0.0)


def _state(config, model, step=0):
    params, batch_stats = reid.init_model(model, jax.random.PRNGKey(0), (1, T, H, W, 3))
    state = create_train_state(config, model.apply, params, batch_stats, jax.random.PRNGKey(1), steps_per_epoch=10)
    return state.replace(step=step)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"source": {"video": rng.integers(0, 255, (B, T, H, W, 3), dtype=np.uint8),
                       "pid": np.repeat(np.arange(B // 4), 4).astype(np.int32)},
            "target": {"video": rng.integers(0, 255, (B, T, H, W, 3), dtype=np.uint8),
                       "camid": np.arange(B, dtype=np.int32) % 3}}


@pytest.mark.slow  # about 30 s; the default stage keeps its 15-minute budget
def test_backbone_gets_minus_beta_times_the_domain_loss_gradient():
    """d L_domain / d θ_backbone with the GRL at β equals −β × the gradient without reversal (β = −1 is
    the identity's backward); the discriminator's own gradient is untouched by the GRL."""
    model = _model()
    batch = _batch()
    source = augment.normalize(batch["source"]["video"])
    target = augment.normalize(batch["target"]["video"])
    params, batch_stats = reid.init_model(model, jax.random.PRNGKey(0), (1, T, H, W, 3))

    def domain_loss(params, beta):
        out_s, stats = common.student_forward(model, params, batch_stats, source, beta, jax.random.PRNGKey(2))
        out_t, _ = common.student_forward(model, params, stats, target, beta, jax.random.PRNGKey(3))
        return (losses.domain_cross_entropy(out_s["frame_domain_logits"], out_t["frame_domain_logits"])
                + losses.domain_cross_entropy(out_s["clip_domain_logits"], out_t["clip_domain_logits"]))

    beta = 0.37
    reversed_grads = jax.grad(domain_loss)(params, beta)
    natural = jax.grad(domain_loss)(params, -1.0)
    for got, plain in zip(jax.tree.leaves(reversed_grads["backbone"]), jax.tree.leaves(natural["backbone"])):
        np.testing.assert_allclose(np.asarray(got), -beta * np.asarray(plain), rtol=1e-4, atol=1e-7)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(natural["backbone"])) > 0
    for name in ("frame_discriminator", "clip_discriminator"):
        for got, plain in zip(jax.tree.leaves(reversed_grads[name]), jax.tree.leaves(natural[name])):
            np.testing.assert_allclose(np.asarray(got), np.asarray(plain), rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def domain_only():
    """The paper step with only the two domain terms weighing (CE/triplet at 0, no teacher), no weight
    decay, so the backbone moves only through the reversed domain gradient; compiled once."""
    config = _config(ce=0.0, triplet=0.0, consistency_ce=0.0, consistency_dist=0.0, camera_alignment=0.0,
                     frame_domain=1.0, clip_domain=1.0)
    config.optimizer.weight_decay = 0.0
    config.optimizer.warmup_epochs = 0.0
    model = _model()
    return config, model, jax.jit(variants.make_train_step(model, config))


def _moved(before, after):
    return max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))


@pytest.mark.slow  # the default stage keeps a margin under its 15 minutes (15–25 s)
def test_step_uses_the_scheduled_beta(domain_only):
    config, model, step = domain_only
    # At step 0 the schedule gives β = 0: the discriminators learn, the backbone gets nothing.
    state0 = _state(config, model, step=0)
    new0, metrics0 = step(state0, _batch())
    assert float(metrics0["grl_beta"]) == 0.0
    assert _moved(state0.params["backbone"], new0.params["backbone"]) == 0.0
    assert _moved(state0.params["frame_discriminator"], new0.params["frame_discriminator"]) > 0
    # Later, β follows 2/(1+exp(−10 s/I_max)) − 1 and the backbone moves.
    s = 137
    state = _state(config, model, step=s)
    new, metrics = step(state, _batch())
    expected = 2.0 / (1.0 + math.exp(-10.0 * s / config.adaptation.grl_max_steps)) - 1.0
    assert float(metrics["grl_beta"]) == pytest.approx(expected, rel=1e-6)
    assert _moved(state.params["backbone"], new.params["backbone"]) > 0


@pytest.mark.slow  # the default stage keeps a margin under its 15 minutes (15–25 s)
def test_total_is_the_weighted_sum_with_the_consistency_ramp():
    weights = dict(ce=0.7, triplet=1.3, frame_domain=0.4, clip_domain=0.9, consistency_ce=0.25, consistency_dist=0.6,
                   camera_alignment=0.35)
    config = _config(**weights)
    config.adaptation.consistency_rampup_steps = 200
    model = _model()
    s = 50
    _, metrics = jax.jit(variants.make_train_step(model, config))(_state(config, model, step=s), _batch())
    ramp = math.exp(-5.0 * (1.0 - s / 200) ** 2)
    expected = sum(w * float(metrics[k]) * (ramp if k.startswith("consistency") else 1.0) for k, w in weights.items())
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)
    # The ramp is not a no-op here, and every term is non-zero, so dropping either would show.
    assert ramp < 0.3 and all(abs(float(metrics[k])) > 1e-3 for k in weights)


@pytest.mark.slow  # about 20 s: compiles the step; the default stage keeps its 15-minute budget
@pytest.mark.parametrize("teacher_augment", [False, True])
def test_teacher_augment_decides_what_the_teacher_sees(teacher_augment):
    config = _config()
    config.adaptation.teacher_augment = teacher_augment
    config.augment.erasing_probability = 0.5
    model = _model()
    state = _state(config, model)
    video = _batch()["target"]["video"]
    k_student, k_augment, k_dropout = jax.random.split(jax.random.PRNGKey(5), 3)
    target = common.prepare_clips(video, k_student, config)
    out, _ = common.teacher_forward(model, state, video, target, k_augment, k_dropout, config)

    def teacher_on(clips):
        return model.apply({"params": state.ema_params, "batch_stats": state.ema_batch_stats}, clips, train=True,
                           grl_beta=0.0, rngs={"dropout": k_dropout}, mutable=["batch_stats"])[0]["bn_embedding"]

    k_flip, k_erase = jax.random.split(k_augment)
    own_view = common.prepare_clips(augment.random_flip(k_flip, video), k_erase, config)
    expected = teacher_on(own_view if teacher_augment else target)
    np.testing.assert_array_equal(np.asarray(out["bn_embedding"]), np.asarray(expected))
    # The two views differ, so the flag is observable.
    assert not np.array_equal(np.asarray(own_view), np.asarray(target))
