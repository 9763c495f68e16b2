"""The reference variant's consistency constant on the device (variants.reference.device_kmeans,
kmeans_consistency) against the numpy path (clustering.kmeans_numpy, losses.host_kmeans_consistency:
sklearn 1.0's KMeans as the authors call it, docs/METHOD.md §4.9).

k-means depends on its seeding, so the comparisons use inputs whose optimum is unique and found from
any sensible seeding (well-separated blobs, every blob holding points); the iteration cap and the
stopping rule are compared from one given start on generic data, where seeding plays no part.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from svreid_jax import clustering, losses
from svreid_jax.variants import reference

_kmeans = jax.jit(reference.device_kmeans, static_argnums=(2,), static_argnames=("n_init", "max_iter", "tol"))
_lloyd = jax.jit(reference._lloyd, static_argnums=(2,))


def _blobs(seed, sizes, dim=24, spread=40.0, noise=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim)) * spread
    truth = np.repeat(np.arange(len(sizes)), sizes)
    points = centres[truth] + rng.normal(scale=noise, size=(len(truth), dim))
    return points, truth


def _same_partition(a, b):
    """True when label vectors a and b group the points alike (cluster numbers aside)."""
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


@pytest.mark.parametrize("seed,sizes", [(1, (2, 9, 3, 6, 4, 8)), (2, (1, 3, 12, 2, 6, 4, 2, 2))])
def test_device_kmeans_finds_the_numpy_paths_clustering_on_separated_blobs(seed, sizes):
    points, truth = _blobs(seed, sizes)
    k = len(sizes)
    want_centres, want_labels, want_inertia = clustering.kmeans_numpy(points, k, n_init=10, max_iter=300,
                                                                      rng=np.random.default_rng(seed))
    assert _same_partition(want_labels, truth)  # the oracle itself finds the planted blobs
    for key in range(3):
        centres, labels, inertia, iterations = _kmeans(jax.random.PRNGKey(key), jnp.asarray(points, jnp.float32), k,
                                                       n_init=10, max_iter=300)
        labels = np.asarray(labels)
        assert _same_partition(labels, want_labels), (key, labels, want_labels)
        # Centres matched by cluster: the mean of the same points.
        order = [int(labels[np.flatnonzero(want_labels == c)[0]]) for c in range(k)]
        np.testing.assert_allclose(np.asarray(centres)[order], want_centres, atol=1e-4)
        assert float(inertia) == pytest.approx(want_inertia, rel=1e-4)
        assert 1 <= int(iterations) <= 300


def _consistency_config(clusters, n_init=10, max_iter=300, mismatch_weight=10.0):
    c = ml_collections.ConfigDict()
    c.reference = ml_collections.ConfigDict(dict(consistency_clusters=clusters, consistency_n_init=n_init,
                                                 consistency_max_iter=max_iter,
                                                 consistency_mismatch_weight=mismatch_weight))
    return c


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_consistency_constant_equals_the_numpy_path(seed):
    # 16 target clips in 4 identities (blobs); the teacher's embedding is the student's plus a little
    # noise, except for clips moved to another blob: those are the student/teacher disagreements.
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 32)) * 30
    group = np.repeat(np.arange(4), 4)
    student = centres[group] + rng.normal(scale=0.2, size=(16, 32))
    teacher = student + rng.normal(scale=0.2, size=student.shape)
    moved = rng.choice(16, size=seed + 1, replace=False)
    teacher[moved] = centres[(group[moved] + 1) % 4] + rng.normal(scale=0.2, size=(len(moved), 32))
    want = losses.host_kmeans_consistency(student, teacher, seed, num_clusters=4, n_init=10, max_iter=300)
    config = _consistency_config(4)
    fn = jax.jit(lambda s, t, k: reference.kmeans_consistency(s, t, k, config))
    for key in range(2):
        got = np.asarray(fn(jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32),
                            jax.random.PRNGKey(key)))
        # Hand value of L_01: the moved clips, and only they, disagree.
        assert got[1] == pytest.approx(len(moved) / 16) and want[1] == pytest.approx(len(moved) / 16)
        np.testing.assert_allclose(got, want, rtol=2e-5)


def _numpy_lloyd(x, centres, max_iter, threshold):
    """The numpy path's Lloyd loop (clustering.kmeans_numpy) from a given start, float64; also the
    number of iterations it ran."""
    x, centres = np.asarray(x, np.float64), np.asarray(centres, np.float64)
    done = 0
    for done in range(1, max_iter + 1):
        d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
        labels = np.argmin(d2, axis=1)
        new = centres.copy()
        for k in range(len(centres)):
            if (labels == k).any():
                new[k] = x[labels == k].mean(axis=0)
        shift = float(np.sum((new - centres) ** 2))
        centres = new
        if shift <= threshold:
            break
    return centres, done


@pytest.mark.parametrize("max_iter,threshold", [(1, 0.0), (2, 0.0), (4, 0.0), (300, 0.0), (300, 0.05), (300, 1.0)])
def test_lloyd_stops_at_the_cap_or_the_shift_threshold_as_the_numpy_loop(max_iter, threshold):
    # Generic points (no planted clusters) and a fixed start: Lloyd takes several iterations to settle,
    # so the cap and the threshold each decide where it stops.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 3))
    start = x[[0, 1, 2, 3, 4]] + 0.01
    want, want_iters = _numpy_lloyd(x, start, max_iter, threshold)
    got, iters = _lloyd(jnp.asarray(x, jnp.float32), jnp.asarray(start, jnp.float32), max_iter,
                        jnp.asarray(threshold, jnp.float32))
    assert int(iters) == want_iters
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    if max_iter == 300 and threshold == 0.0:
        assert 4 < want_iters < 300  # the cases above do stop at the cap before convergence


def test_lloyd_keeps_the_centre_of_an_empty_cluster():
    x = jnp.asarray([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
    start = jnp.asarray([[0.0, 0.5], [10.0, 0.5], [100.0, 100.0]])  # the third attracts no point
    got, iters = _lloyd(x, start, 300, jnp.asarray(0.0))
    np.testing.assert_allclose(np.asarray(got), [[0.0, 0.5], [10.0, 0.5], [100.0, 100.0]])
    assert int(iters) == 1


def test_greedy_seeding_puts_one_centre_in_every_separated_blob():
    # Six tight, far-apart blobs of unequal sizes: seeding ∝ squared distance (greedy over 2 + ⌊ln 6⌋
    # candidates) starts one centre per blob; uniform seeding would repeat a blob in most draws
    # (P(six distinct blobs) < 2 % here).
    points, truth = _blobs(3, (2, 3, 4, 8, 12, 15), spread=100.0, noise=0.01)
    x = jnp.asarray(points, jnp.float32)
    seed = jax.jit(reference._greedy_kmeans_plus_plus, static_argnums=(2,))
    for key in range(10):
        centres = np.asarray(seed(jax.random.PRNGKey(key), x, 6))
        rows = [int(np.argmin(np.abs(points - c).sum(1))) for c in centres]
        np.testing.assert_allclose(centres, points[rows], atol=1e-5)  # every centre is one of the points
        assert sorted(truth[rows].tolist()) == list(range(6)), key


def test_restarts_keep_the_least_inertia():
    # 60 uniform points in the unit square, 6 clusters: single restarts end in several local optima
    # (fewer than half reach the best one for these keys); keeping the least inertia of 10 restarts
    # reaches the optimum the numpy path finds with 50 restarts, with the same partition.
    points = np.random.default_rng(0).uniform(size=(60, 2))
    x = jnp.asarray(points, jnp.float32)
    _, want_labels, want_inertia = clustering.kmeans_numpy(points, 6, n_init=50, rng=np.random.default_rng(0))
    single = np.array([float(_kmeans(jax.random.PRNGKey(k), x, 6, n_init=1, max_iter=300)[2]) for k in range(20)])
    assert np.all(single >= want_inertia * (1 - 1e-5))
    assert np.mean(single > want_inertia * 1.01) > 0.4 and single.max() > want_inertia * 1.2
    for key in range(5):
        _, labels, inertia, _ = _kmeans(jax.random.PRNGKey(key), x, 6, n_init=10, max_iter=300)
        assert float(inertia) == pytest.approx(want_inertia, rel=1e-5)
        assert _same_partition(np.asarray(labels), want_labels)
