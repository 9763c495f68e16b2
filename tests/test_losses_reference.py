"""Reference-variant losses: TMSE, attentive entropy, host k-means consistency (hand-computed / oracle)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svreid_jax import losses


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_tmse_by_hand_with_clamp_and_stop_gradient():
    # One clip, 3 frames, 2 classes. Frame 2 jumps far enough for the clamp at τ² to bite.
    logits = np.array([[[0.0, 0.0], [1.0, -1.0], [9.0, -9.0]]], np.float32)
    lp = _log_softmax(logits[0])
    d1 = (lp[1] - lp[0]) ** 2
    d2 = np.minimum((lp[2] - lp[1]) ** 2, 4.0)  # τ = 2
    want = (d1.sum() + d2.sum()) / 4  # mean over (t ≥ 1) × classes = 2 × 2 entries
    assert float(losses.tmse(jnp.asarray(logits), tau=2.0)) == pytest.approx(want, rel=1e-5)
    assert (lp[2][1] - lp[1][1]) ** 2 > 4.0, "the case must exercise the clamp"
    # The earlier frame of each pair is detached: frame 0 never gets a gradient.
    g = jax.grad(lambda x: losses.tmse(x, 4.0))(jnp.asarray(logits))
    np.testing.assert_array_equal(np.asarray(g[0, 0]), 0.0)
    assert np.abs(np.asarray(g[0, 1])).sum() > 0
    assert float(losses.tmse(jnp.zeros((2, 1, 3)))) == 0.0


def test_attentive_entropy_by_hand_and_weight_not_detached():
    cls = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], np.float32)
    dom = np.array([[0.0, 0.0], [3.0, -3.0]], np.float32)

    def ent(x):
        p = np.exp(_log_softmax(x))
        return -(p * np.log(p)).sum(-1)

    want = np.mean((1 + ent(dom)) * ent(cls))
    assert ent(cls)[1] == pytest.approx(math.log(3)) and ent(dom)[0] == pytest.approx(math.log(2))
    got = losses.attentive_entropy(jnp.asarray(cls), jnp.asarray(dom))
    assert float(got) == pytest.approx(want, rel=1e-6)
    # Gradient reaches the domain logits through the weight 1 + H(domain) (the reference does not detach it).
    g = jax.grad(lambda d: losses.attentive_entropy(jnp.asarray(cls), d))(jnp.asarray(dom))
    assert np.abs(np.asarray(g[1])).sum() > 1e-3
    with pytest.raises(ValueError, match="leading shape"):
        losses.attentive_entropy(jnp.zeros((3, 4)), jnp.zeros((2, 2)))


def test_frame_cross_entropy_repeats_clip_label():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4)), jnp.float32)
    labels = jnp.array([1, 3])
    lp = _log_softmax(np.asarray(logits))
    want = -np.mean([lp[b, t, int(labels[b])] for b in range(2) for t in range(3)])
    assert float(losses.frame_cross_entropy(logits, labels)) == pytest.approx(want, rel=1e-5)


def test_host_consistency_terms():
    rng = np.random.default_rng(0)
    blobs = np.repeat(np.eye(4) * 20, 4, axis=0) + rng.normal(scale=0.1, size=(16, 4))
    teacher = blobs + rng.normal(scale=0.1, size=blobs.shape)
    out = losses.host_kmeans_consistency(blobs, teacher, seed=3, num_clusters=4, n_init=5)
    x = np.concatenate([blobs, teacher])
    group = np.tile(np.repeat(np.arange(4), 4), 2)
    centre = np.stack([x[group == g].mean(0) for g in range(4)])
    dist = np.linalg.norm(x - centre[group], axis=1).mean()
    np.testing.assert_allclose(out, [dist, 0.0, dist], rtol=1e-5)
    # Swap two teacher clips across blobs: 2 of 16 clips disagree → L_01 = 1/8, L_cons = 10/8 + L_dist.
    swapped = teacher.copy()
    swapped[[0, 4]] = teacher[[4, 0]]
    out = losses.host_kmeans_consistency(blobs, swapped, seed=3, num_clusters=4, n_init=5)
    assert out[1] == pytest.approx(1 / 8) and out[0] == pytest.approx(10 / 8 + out[2], rel=1e-6)
