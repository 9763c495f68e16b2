"""k-means: on device (jit-able, the paper teacher's) against numpy, and on the host (the reference's)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svreid_jax import clustering


def _numpy_lloyd(points, centroids, iters):
    centroids = centroids.copy()
    for _ in range(iters):
        assign = np.argmin(((points[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
        for k in range(len(centroids)):
            if np.any(assign == k):
                centroids[k] = points[assign == k].mean(0)
    return centroids


def test_lloyd_iterations_match_numpy_on_fixed_points():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(40, 3)).astype(np.float32)
    init = points[[0, 5, 10, 20]].copy()
    got = np.asarray(clustering.lloyd_iterations(jnp.asarray(points), jnp.asarray(init), 7))
    np.testing.assert_allclose(got, _numpy_lloyd(points.astype(np.float64), init.astype(np.float64), 7), atol=1e-5)


def test_kmeans_recovers_separated_blobs():
    centers = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    points = np.concatenate([c + 0.1 * np.random.default_rng(i).normal(size=(10, 2)) for i, c in enumerate(centers)])
    centroids, assign = jax.jit(clustering.kmeans, static_argnums=(2, 3))(jax.random.PRNGKey(0), jnp.asarray(points), 3, 5)
    assign = np.asarray(assign)
    # Each blob is one cluster, and the three clusters differ.
    assert all(len(set(assign[i * 10:(i + 1) * 10])) == 1 for i in range(3))
    assert len(set(assign)) == 3
    np.testing.assert_allclose(np.sort(np.asarray(centroids), axis=0), np.sort(
        np.stack([points[i * 10:(i + 1) * 10].mean(0) for i in range(3)]), axis=0), atol=1e-5)


def test_kmeans_plus_plus_init_picks_distinct_points():
    points = jnp.asarray(np.random.default_rng(2).normal(size=(16, 4)), jnp.float32)
    init = np.asarray(clustering.kmeans_plus_plus_init(jax.random.PRNGKey(3), points, 6))
    rows = {tuple(np.round(r, 6)) for r in init}
    assert len(rows) == 6
    assert all(any(np.allclose(r, p) for p in np.asarray(points)) for r in init)


def test_host_kmeans_recovers_separable_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float64) * 5
    truth = np.repeat(np.arange(4), 10)
    points = centres[truth] + rng.normal(scale=0.3, size=(40, 2))
    got_centres, labels, inertia = clustering.kmeans_numpy(points, 4, n_init=10, max_iter=300,
                                                       rng=np.random.default_rng(1))
    # Oracle: on well-separated blobs the clustering is the true partition, centres are the blob means.
    mapping = {t: labels[truth == t][0] for t in range(4)}
    assert len(set(mapping.values())) == 4
    np.testing.assert_array_equal(labels, np.vectorize(mapping.get)(truth))
    oracle = np.stack([points[truth == t].mean(0) for t in range(4)])
    np.testing.assert_allclose(got_centres[[mapping[t] for t in range(4)]], oracle, atol=1e-9)
    assert inertia == pytest.approx(sum(((points[truth == t] - oracle[t]) ** 2).sum() for t in range(4)))
    with pytest.raises(ValueError, match="cannot make"):
        clustering.kmeans_numpy(points[:3], 4)


def _iou_by_sets(labels, other):
    out = []
    for i, a in enumerate(labels):
        if a < 0:
            out.append(np.nan)
            continue
        own = {j for j, x in enumerate(labels) if x == a}
        theirs = {i} if other[i] < 0 else {j for j, x in enumerate(other) if x == other[i]}
        out.append(len(own & theirs) / len(own | theirs))
    return np.array(out)


def test_membership_iou_hand_case():
    labels = np.array([0, 0, 0, 1, 1, -1])
    other = np.array([0, 0, 1, 1, -1, 1])
    # point 0: {0,1,2} vs {0,1} → 2/3; point 2: {0,1,2} vs {2,3,5} → 1/5; point 3: {3,4} vs {2,3,5} → 1/4;
    # point 4: {3,4} vs itself alone → 1/2; point 5: an outlier of `labels`.
    np.testing.assert_allclose(clustering.membership_iou(labels, other), [2 / 3, 2 / 3, 1 / 5, 1 / 4, 1 / 2, np.nan])


@pytest.mark.parametrize("seed", range(5))
def test_membership_iou_matches_sets(seed):
    rng = np.random.default_rng(seed)
    labels, other = rng.integers(-1, 5, 40), rng.integers(-1, 7, 40)
    np.testing.assert_allclose(clustering.membership_iou(labels, other), _iou_by_sets(labels, other))
    with pytest.raises(ValueError, match="two label vectors of one length"):
        clustering.membership_iou(labels, other[:-1])


def test_reliable_dbscan_drops_a_bridge_that_merges_when_loosened():
    # Two tight groups on a line and a loose pair between them: at eps the pair is its own cluster; at
    # eps + delta it bridges both groups into one, so it is not independent and becomes outliers,
    # while each group, which only grows by the pair, keeps most of its overlap.
    x = np.array([0.0, 0.1, 0.2, 0.3, 0.75, 1.05, 1.5, 1.6, 1.7, 1.8])
    d = np.abs(x[:, None] - x[None, :])
    plain = clustering.dbscan(d, 0.4, 2)
    assert plain.tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    loose = clustering.dbscan(d, 0.6, 2)
    assert len(set(loose.tolist())) == 1
    kept = clustering.reliable_dbscan(d, 0.4, 2, delta=0.2, min_iou=0.3)
    # The groups overlap their merged loose cluster by 4/10 ≥ 0.3, the pair by 2/10 < 0.3.
    assert kept.tolist() == [0, 0, 0, 0, -1, -1, 2, 2, 2, 2]
    assert np.array_equal(clustering.reliable_dbscan(d, 0.4, 2, delta=0.2, min_iou=0.0), plain)


def _graph_of(d, radius, ceiling=1.0):
    first, second = np.nonzero(np.triu(d <= radius, 1))
    return clustering.RadiusGraph(len(d), first, second, d[first, second].astype(np.float32), radius, ceiling)


def test_dbscan_on_a_radius_graph_equals_the_dense_matrix():
    # Hand case on a line (eps 1.5, min_samples 3): cores 1.0 and 11.0; 0, 2, 10, 12.5 border; 5.0 alone.
    x = np.array([0.0, 1.0, 2.0, 5.0, 10.0, 11.0, 12.5])
    d = np.abs(x[:, None] - x[None, :])
    np.testing.assert_array_equal(clustering.dbscan(_graph_of(d, 1.5, ceiling=np.inf), 1.5, 3), [0, 0, 0, -1, 1, 1, 1])
    rng = np.random.default_rng(3)
    for seed in range(3):
        pts = np.concatenate([rng.normal(size=(5, 2))[rng.integers(5, size=60)] * 4 + rng.normal(size=(60, 2)),
                              rng.normal(size=(10, 2)) * 8])
        d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)) / 30  # within [0, 1]: ceiling 1
        graph = _graph_of(d, 0.1)
        for eps, min_samples in ((0.03, 3), (0.05, 4), (0.1, 6), (0.0, 1)):
            np.testing.assert_array_equal(clustering.dbscan(graph, eps, min_samples), clustering.dbscan(d, eps, min_samples))
        np.testing.assert_array_equal(clustering.reliable_dbscan(graph, 0.05, 4, 0.03, 0.5),
                                      clustering.reliable_dbscan(d, 0.05, 4, 0.03, 0.5))
    # eps at the ceiling: every pair is within it; beyond the listed radius it cannot answer.
    np.testing.assert_array_equal(clustering.dbscan(graph, 1.0, 70), np.zeros(70, np.int32))
    np.testing.assert_array_equal(clustering.dbscan(graph, 1.0, 71), np.full(70, -1, np.int32))
    with pytest.raises(ValueError, match=r"eps=0.2 exceeds the radius graph's radius 0.1"):
        clustering.dbscan(graph, 0.2, 3)
