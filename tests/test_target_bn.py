"""`adaptation.target_bn` (docs/METHOD.md, "Target-domain BN"): with it, the student's BN running statistics,
which evaluation uses, follow its target forward only; without it, the source forward updates them first
and the target forward next. Checked on the stem's BatchNorm against the moments of its input computed
in numpy (the stem convolution written out), and on every BatchNorm by changing the source batch alone.
"""
import jax
import numpy as np
import pytest

from configs import demo
from svreid_jax import variants
from svreid_jax.data import augment
from svreid_jax.models import reid, resnet
from svreid_jax.state import create_train_state

B, T, H, W = 8, 2, 32, 16


def _config(target_bn, variant="frame"):
    # `frame`: source losses and the frame discriminator, the cheapest step with a target term.
    # `source_only`: no target term; target BN alone makes the step forward the target clips.
    c = demo.get_config(variant)
    c.data.height, c.data.width, c.data.seq_len = H, W, T
    c.model.width = 8
    c.augment.erasing_probability = 0.0  # the BN input is then the normalised clip's convolution, exactly
    c.adaptation.target_bn = target_bn
    return c


def _videos(seed, low, high):
    return np.random.default_rng(seed).integers(low, high, (B, T, H, W, 3), dtype=np.uint8)


def _batch(source, target):
    return {"source": {"video": source, "pid": np.repeat(np.arange(B // 4), 4).astype(np.int32)},
            "target": {"video": target, "camid": np.arange(B, dtype=np.int32) % 3}}


@pytest.fixture(scope="module")
def setup():
    model = reid.ReIDNet(num_classes=4, backbone={"depth": "tiny", "width": 8}, disc_hidden=16)
    params, batch_stats = reid.init_model(model, jax.random.PRNGKey(0), (1, T, H, W, 3))
    state = create_train_state(_config(True), model.apply, params, batch_stats, jax.random.PRNGKey(1),
                               steps_per_epoch=10)
    # Dark source, bright target: the two domains' stem moments are far apart.
    return model, state, _videos(0, 0, 100), _videos(1, 0, 100), _videos(2, 150, 256)


def _stem_moments(params, video):
    """Per-channel mean and biased variance of the stem convolution's output over every frame and
    position (what the stem BN normalises with in training), in float64 numpy: 7×7, stride 2, padding 3."""
    mean, std = np.asarray(augment.IMAGENET_MEAN), np.asarray(augment.IMAGENET_STD)
    x = (video.reshape(-1, H, W, 3).astype(np.float64) / 255.0 - mean) / std
    conv = params["backbone"]["conv1"]
    kernel = np.asarray(conv["kernel"], np.float64)  # [7, 7, 3, C]
    x = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
    out = sum(x[:, i:i + H:2, j:j + W:2, :] @ kernel[i, j] for i in range(7) for j in range(7))
    if "bias" in conv:
        out = out + np.asarray(conv["bias"], np.float64)
    return out.mean(axis=(0, 1, 2)), out.var(axis=(0, 1, 2))


def _step(model, target_bn, variant="frame"):
    config = _config(target_bn, variant)
    assert variants.uses_target(config) == (target_bn or variant == "frame")
    return jax.jit(variants.make_train_step(model, config))


def _stem_stats(state):
    stats = state.batch_stats["backbone"]["bn1"]
    return np.asarray(stats["mean"], np.float64), np.asarray(stats["var"], np.float64)


def _same_everywhere(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow  # about 17 s: compiles the step; the default stage keeps its 15-minute budget
@pytest.mark.parametrize("variant", ["source_only", "frame"])
def test_with_target_bn_the_running_statistics_follow_the_target_forward_only(setup, variant):
    model, state, source, other_source, target = setup
    step = _step(model, True, variant)
    after, _ = step(state, _batch(source, target))
    m = resnet.BN_MOMENTUM
    old_mean, old_var = _stem_stats(state)
    t_mean, t_var = _stem_moments(state.params, target)
    mean, var = _stem_stats(after)
    np.testing.assert_allclose(mean, m * old_mean + (1 - m) * t_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var, m * old_var + (1 - m) * t_var, rtol=1e-4, atol=1e-5)
    # They moved toward the target's moments, not the source's.
    s_mean, _ = _stem_moments(state.params, source)
    assert np.all(np.abs(mean - t_mean) < np.abs(old_mean - t_mean))
    assert np.abs(mean - s_mean).sum() > np.abs(old_mean - s_mean).sum()
    # Every BatchNorm of the student (backbone and BN-neck): another source batch, the same statistics.
    again, _ = step(state, _batch(other_source, target))
    assert _same_everywhere(after.batch_stats, again.batch_stats)
    assert not _same_everywhere(after.params, again.params)  # while the source did change the update


@pytest.mark.slow  # another compilation of the step
def test_without_target_bn_the_source_forward_updates_them_first(setup):
    model, state, source, other_source, target = setup
    step = _step(model, False)
    after, _ = step(state, _batch(source, target))
    m = resnet.BN_MOMENTUM
    old_mean, old_var = _stem_stats(state)
    s_mean, s_var = _stem_moments(state.params, source)
    t_mean, t_var = _stem_moments(state.params, target)
    mean, var = _stem_stats(after)
    np.testing.assert_allclose(mean, m * (m * old_mean + (1 - m) * s_mean) + (1 - m) * t_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var, m * (m * old_var + (1 - m) * s_var) + (1 - m) * t_var, rtol=1e-4, atol=1e-5)
    again, _ = step(state, _batch(other_source, target))
    assert not np.array_equal(_stem_stats(after)[0], _stem_stats(again)[0])
