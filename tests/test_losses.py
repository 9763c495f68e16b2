"""Losses against hand-computed values and a numpy k-means."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import authors_numpy
from svreid_jax import losses, ops


def test_cross_entropy_uniform_logits_is_log_k():
    logits = jnp.zeros((3, 4))
    assert float(losses.cross_entropy(logits, jnp.array([0, 1, 3]))) == pytest.approx(np.log(4), abs=1e-6)


def test_cross_entropy_label_smoothing_hand_value():
    # logits (log 1, log 3) → p = (0.25, 0.75); label 1 with smoothing 0.2 → targets (0.1, 0.9).
    logits = jnp.log(jnp.array([[1.0, 3.0]]))
    expected = -(0.1 * np.log(0.25) + 0.9 * np.log(0.75))
    assert float(losses.cross_entropy(logits, jnp.array([1]), 0.2)) == pytest.approx(expected, abs=1e-6)


def test_batch_hard_triplet_cosine_hand_value():
    # a=(1,0), b=(0,1) share pid 0; c=(1,0), d=(-1,0) share pid 1; distance = −cos.
    # anchor a: hardest pos b (0), hardest neg c (−1) → 1.3;  b: 0 vs 0 → 0.3
    # c: pos d (1), neg a (−1) → 2.3;  d: pos c (1), neg b (0) → 1.3;  mean 1.3
    x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    y = jnp.array([0, 0, 1, 1])
    assert float(losses.batch_hard_triplet(x, y, 0.3, "cosine")) == pytest.approx(1.3, abs=1e-6)


def test_batch_hard_triplet_euclidean_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5)).astype(np.float32)
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    same = y[:, None] == y[None]
    expected = np.mean(np.maximum(np.where(same, d, -np.inf).max(1) - np.where(same, np.inf, d).min(1) + 0.3, 0))
    got = float(losses.batch_hard_triplet(jnp.asarray(x), jnp.asarray(y), 0.3, "euclidean"))
    assert got == pytest.approx(expected, rel=1e-5)


def test_triplet_rejects_unknown_metric():
    with pytest.raises(ValueError, match="unknown distance metric 'manhattan'"):
        losses.batch_hard_triplet(jnp.ones((2, 2)), jnp.array([0, 1]), metric="manhattan")


def test_domain_cross_entropy_hand_values():
    # Perfectly confident correct discriminator → 0; uniform → log 2.
    confident_s = jnp.array([[10.0, -10.0]] * 3)
    confident_t = jnp.array([[-10.0, 10.0]] * 2)
    assert float(losses.domain_cross_entropy(confident_s, confident_t)) == pytest.approx(0.0, abs=1e-6)
    uniform = jnp.zeros((2, 4, 2))
    assert float(losses.domain_cross_entropy(uniform, uniform)) == pytest.approx(np.log(2), abs=1e-6)
    assert float(losses.domain_accuracy(confident_s, confident_t)) == 1.0
    assert float(losses.domain_accuracy(confident_t, confident_s)) == 0.0


def test_teacher_consistency_terms():
    # Teacher = student on two tight, well-separated directions: the student's assignment agrees
    # with the teacher's clusters, so L^C_1 is small; L^C_2 equals the numpy distance to the centroid.
    rng = np.random.default_rng(4)
    base = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    x = np.concatenate([base[0] + 0.01 * rng.normal(size=(6, 3)), base[1] + 0.01 * rng.normal(size=(6, 3))])
    out = losses.teacher_consistency(jax.random.PRNGKey(0), jnp.asarray(x), jnp.asarray(x), num_clusters=2,
                                     temperature=1.0)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cents = np.stack([xn[:6].mean(0), xn[6:].mean(0)])
    expected_dist = np.mean(np.concatenate([np.linalg.norm(xn[:6] - cents[0], axis=1),
                                            np.linalg.norm(xn[6:] - cents[1], axis=1)]))
    assert float(out["consistency_dist"]) == pytest.approx(expected_dist, rel=1e-4)
    logits = xn @ (cents / np.linalg.norm(cents, axis=1, keepdims=True)).T / 1.0
    labels = np.array([0] * 6 + [1] * 6)
    # Cluster numbering is arbitrary: the loss is the same under swapping both.
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected_ce = min(-np.mean(logp[np.arange(12), labels]), -np.mean(logp[np.arange(12), 1 - labels]))
    assert float(out["consistency_ce"]) == pytest.approx(expected_ce, rel=1e-4)


def test_teacher_consistency_labels_by_cosine_so_the_student_agrees_with_itself():
    # 32 unit vectors in 3-D, 6 clusters: with this seed k-means' own Euclidean labels (nearest
    # un-normalised centroid) disagree with the cosine ranking for 2 clips, so a teacher labelled by
    # Euclidean distance would ask student = teacher to move.
    from svreid_jax import clustering
    t = np.random.default_rng(22).normal(size=(32, 3))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    key = jax.random.PRNGKey(22)
    centroids, euclidean_labels = jax.device_get(clustering.kmeans(key, jnp.asarray(t, jnp.float32), 6, 10))
    directions = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    logits = t @ directions.T / 0.1
    cosine_labels = np.argmax(logits, axis=1)
    assert np.sum(cosine_labels != euclidean_labels) == 2
    out = losses.teacher_consistency(key, jnp.asarray(t, jnp.float32), jnp.asarray(t, jnp.float32), num_clusters=6,
                                     num_iters=10, temperature=0.1)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    # L^C_1 is the cross-entropy against the student's own most likely cluster: its minimum over labels.
    assert float(out["consistency_ce"]) == pytest.approx(-np.mean(logp.max(axis=1)), rel=1e-5)
    want_dist = np.mean(np.linalg.norm(t - centroids[cosine_labels], axis=1))
    assert float(out["consistency_dist"]) == pytest.approx(want_dist, rel=1e-5)


def test_teacher_consistency_gradient_reaches_student_only():
    s = jnp.asarray(np.random.default_rng(5).normal(size=(8, 4)), jnp.float32)
    t = s + 0.1

    def total(s, t):
        out = losses.teacher_consistency(jax.random.PRNGKey(1), s, t, num_clusters=3)
        return out["consistency_ce"] + out["consistency_dist"]

    gs, gt = jax.grad(total, argnums=(0, 1))(s, t)
    assert float(jnp.abs(gs).sum()) > 0
    assert float(jnp.abs(gt).sum()) == 0.0


def _numpy_infonce(z, k, tau):
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    b, t, _ = z.shape
    terms = []
    for g in range(b // k):
        group = z[g * k:(g + 1) * k]  # [K, T, D]
        for ka in range(k):
            for ta in range(t):
                anchor = group[ka, ta]
                negs = [group[kb, tb] @ anchor / tau for kb in range(k) for tb in range(t) if tb != ta]
                for kp in range(k):
                    if kp == ka:
                        continue
                    s_pos = group[kp, ta] @ anchor / tau
                    terms.append(s_pos - np.log(np.sum(np.exp(negs)) + np.exp(s_pos)))
    return -np.mean(terms)


def test_temporal_infonce_matches_per_pair_numpy_loop():
    z = np.random.default_rng(6).normal(size=(8, 4, 5)).astype(np.float32)
    got = float(losses.temporal_infonce(jnp.asarray(z), 4, 0.07))
    assert got == pytest.approx(_numpy_infonce(z.astype(np.float64), 4, 0.07), rel=1e-4)


def test_temporal_infonce_hand_value_two_clips_two_frames():
    # K=2, T=2, orthogonal unit vectors per time step, tau=1: for each anchor the one positive has
    # s=1 and the two negatives s=0 → loss = −(1 − log(2 + e)).
    z = jnp.asarray([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    assert float(losses.temporal_infonce(z, 2, 1.0)) == pytest.approx(-(1 - np.log(2 + np.e)), abs=1e-6)


def test_temporal_infonce_rejects_partial_groups():
    with pytest.raises(ValueError, match="whole groups of 4"):
        losses.temporal_infonce(jnp.ones((6, 4, 3)), 4)
    with pytest.raises(ValueError, match="at least 2 clips per identity"):
        losses.temporal_infonce(jnp.ones((4, 4, 3)), 1)


def test_temporal_infonce_summed_over_groups_matches_the_authors_code_at_b32_k4():
    z = np.random.default_rng(11).normal(size=(32, 4, 16))  # [B, T, D], P×K = 8×4
    want = authors_numpy.infonce(z.transpose(0, 2, 1), 4, 0.07)
    got = float(losses.temporal_infonce(jnp.asarray(z, jnp.float32), 4, 0.07, sum_groups=True))
    assert got == pytest.approx(want, rel=1e-5)
    mean = float(losses.temporal_infonce(jnp.asarray(z, jnp.float32), 4, 0.07))
    assert mean == pytest.approx(_numpy_infonce(z, 4, 0.07), rel=1e-5)
    # Their value is G = 32/4 = 8 times the mean over pairs.
    assert got / mean == pytest.approx(8.0, rel=1e-6)


def _centred(x, groups):  # as losses.teacher_consistency centres
    return ops.camera_centred(x, groups, keep_singletons=True, normalise_after=True)


def test_camera_centring_in_the_step_hand_values():
    x = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0], [1.0, 1.0]])
    out = np.asarray(_centred(x, jnp.asarray([0, 0, 1, 1])))
    r = 1 / np.sqrt(2)
    # group 0: mean (0.5, 0.5); group 1: mean (2, 2.5) → (1, 1.5)/|…| and (−1, −1.5)/|…|
    n = np.hypot(1.0, 1.5)
    np.testing.assert_allclose(out, [[r, -r], [-r, r], [1 / n, 1.5 / n], [-1 / n, -1.5 / n]], atol=1e-6)
    # A row alone in its group is only normalised (centring would zero it), and gradients stay finite.
    lone = np.asarray(_centred(x, jnp.asarray([0, 0, 1, 2])))
    np.testing.assert_allclose(lone[2:], [[0.6, 0.8], [r, r]], atol=1e-6)
    grad = jax.grad(lambda v: jnp.sum(_centred(v, jnp.asarray([0, 0, 1, 1])) ** 3))(
        jnp.asarray([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0], [1.0, 1.0]]))  # group 0 centres to zero rows
    assert np.all(np.isfinite(np.asarray(grad)))


def test_camera_alignment_hand_values_and_numpy():
    cams = jnp.asarray([0, 0, 1, 1])
    # Each camera at one point: all of the variance is between cameras.
    apart = jnp.asarray([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 1.0]])  # normalised: (1,0),(1,0),(0,1),(0,1)
    assert float(losses.camera_alignment(apart, cams)) == pytest.approx(1.0, abs=1e-5)
    # Both cameras with the batch mean: none of it is.
    mixed = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [5.0, 0.0]])
    assert float(losses.camera_alignment(mixed, cams)) == pytest.approx(0.0, abs=1e-6)
    # Three rows in camera 0, one in camera 1 (normalised rows (1,0),(1,0),(0,1) | (0,1)):
    # μ = (0.5, 0.5); μ_0 = (2/3, 1/3); between = (3·(1/36 + 1/36) + 1·(1/4 + 1/4)) / 4 = (1/6 + 1/2) / 4 = 1/6;
    # total = mean ‖x − μ‖² = 0.5  →  1/3.
    odd = jnp.asarray([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert float(losses.camera_alignment(odd, jnp.asarray([0, 0, 0, 1]))) == pytest.approx(1 / 3, abs=1e-5)
    # Against a per-camera loop in float64 on random rows, and unchanged by a scale of each row.
    rng = np.random.default_rng(1)
    x, c = rng.normal(size=(12, 5)), rng.integers(0, 3, size=12)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    mu = u.mean(0)
    between = np.mean([np.sum((u[c == c[i]].mean(0) - mu) ** 2) for i in range(12)])
    want = between / np.mean(np.sum((u - mu) ** 2, axis=1))
    got = losses.camera_alignment(jnp.asarray(x * rng.uniform(0.5, 3, size=(12, 1)), jnp.float32), jnp.asarray(c))
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_camera_centred_consistency_ignores_a_per_camera_offset():
    rng = np.random.default_rng(0)
    people = rng.normal(size=(8, 16))
    cams = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    offset = np.where(cams[:, None] == 0, 5.0, -5.0) * rng.normal(size=(1, 16))  # what each camera adds
    key = jax.random.PRNGKey(0)

    def terms(x, groups):
        out = losses.teacher_consistency(key, jnp.asarray(x), jnp.asarray(x), num_clusters=4, groups=groups)
        return np.array([float(out["consistency_ce"]), float(out["consistency_dist"])])

    np.testing.assert_allclose(terms(people + offset, jnp.asarray(cams)), terms(people, jnp.asarray(cams)), rtol=1e-5)
    # Without centring the offset dominates: k-means splits by camera and the terms change.
    assert not np.allclose(terms(people + offset, None), terms(people, jnp.asarray(cams)), rtol=1e-2)
