"""k-reciprocal Jaccard distances: the sparse path (O(N·k) memory, what plus clusters on and re-ranking
runs) against the dense [N, N] reference, bit for bit, on planted identities with camera offsets; the
dense path's chunked Jaccard step against numpy; exp_neg against numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svreid_jax import clustering, kreciprocal


def planted(n, *, seed, dim=32, per_id=12, cameras=4, noise=0.8, camera_offset=0.5, duplicates=0):
    """L2-normalised float32 [n, dim]: identity centre + camera offset + noise; the last `duplicates` rows
    copy row 0 (exact distance ties)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(max(1, n // per_id), size=n)
    cams = rng.integers(cameras, size=n)
    x = (rng.normal(size=(ids.max() + 1, dim))[ids] + camera_offset * rng.normal(size=(cameras, dim))[cams]
         + noise * rng.normal(size=(n, dim)))
    if duplicates:
        x[n - duplicates:] = x[0]
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _numpy_jaccard(v, rows, cols):
    """J = 1 − m / (2 − m), m = Σ_k min(V[i, k], V[g, k]), in float64."""
    v = np.asarray(v, np.float64)
    m = np.minimum(v[rows][:, None, :], v[cols][None, :, :]).sum(-1)
    return 1.0 - m / (2.0 - m)


def _assert_graph_is_dense(graph, dense, radius):
    n = dense.shape[0]
    upper = np.triu_indices(n, 1)
    listed = np.zeros((n, n), bool)
    listed[graph.first, graph.second] = True
    np.testing.assert_array_equal(listed[upper], dense[upper] <= radius)
    np.testing.assert_array_equal(graph.distance, dense[graph.first, graph.second])  # equal, not close


# Layouts: (seed, per_id, cameras, camera_offset, duplicates, k1, k2, tile, keep)
LAYOUTS = [
    (0, 12, 4, 0.5, 0, 20, 6, 128, None),  # several tiles and a partial one
    (1, 6, 6, 1.0, 0, 10, 1, 100, 12),  # strong camera offsets; no query expansion; few kept → many re-reads
    (2, 20, 2, 0.3, 30, 20, 3, 64, 22),  # 30 exact copies: ties at the top-k's edge (whole-row fallback)
]


@pytest.mark.parametrize("seed, per_id, cameras, offset, duplicates, k1, k2, tile, keep", LAYOUTS)
def test_sparse_graph_and_dbscan_equal_the_dense_path(seed, per_id, cameras, offset, duplicates, k1, k2, tile, keep):
    f = planted(300, seed=seed, per_id=per_id, cameras=cameras, camera_offset=offset, duplicates=duplicates)
    cosine = kreciprocal.cosine_distances(f, tile=tile)
    np.testing.assert_array_equal(cosine, cosine.T)
    np.testing.assert_allclose(cosine, np.maximum(1 - f @ f.T, 0), atol=1e-5)
    dense = np.asarray(kreciprocal.jaccard_distances(cosine, k1=k1, k2=k2))
    graph = kreciprocal.jaccard_graph(f, k1=k1, k2=k2, radius=0.65, tile=tile, keep=keep)
    _assert_graph_is_dense(graph, dense, 0.65)
    assert len(graph.first) > 300  # the layouts do cluster
    for eps, min_samples in ((0.6, 4), (0.45, 2), (0.65, 6)):
        labels = clustering.dbscan(graph, eps, min_samples)
        np.testing.assert_array_equal(labels, clustering.dbscan(dense, eps, min_samples))
        assert labels.max() >= 1
    np.testing.assert_array_equal(clustering.reliable_dbscan(graph, 0.6, 4, 0.05, 0.5),
                                  clustering.reliable_dbscan(dense, 0.6, 4, 0.05, 0.5))


def test_graph_beyond_radius_one_lists_every_overlapping_pair():
    f = planted(120, seed=3)
    dense = np.asarray(kreciprocal.jaccard_distances(kreciprocal.cosine_distances(f), k1=8, k2=2))
    graph = kreciprocal.jaccard_graph(f, k1=8, k2=2, radius=1.2)
    _assert_graph_is_dense(graph, dense, 1.0 - 1e-7)  # the unlisted pairs are those at exactly 1
    np.testing.assert_array_equal(clustering.dbscan(graph, 1.0, 4), clustering.dbscan(dense, 1.0, 4))
    np.testing.assert_array_equal(clustering.dbscan(graph, 0.5, 3), clustering.dbscan(dense, 0.5, 3))
    with pytest.raises(ValueError, match="radius=-0.1 must be ≥ 0"):
        kreciprocal.jaccard_graph(f, k1=8, k2=2, radius=-0.1)


def test_sparse_chunking_does_not_change_the_graph(monkeypatch):
    f = planted(200, seed=4)
    whole = kreciprocal.jaccard_graph(f, k1=12, k2=4, radius=0.7, tile=64)  # the tile shape is part of D's bits
    monkeypatch.setattr(kreciprocal, "_PAIR_CHUNK", 100)  # many calls, a partial last one
    monkeypatch.setattr(kreciprocal, "_BUFFER_ELEMENTS", 37 * 201)  # blocks of 37 rows of V
    monkeypatch.setattr(kreciprocal, "_PAIR_ROWS", 45)
    parts = kreciprocal.jaccard_graph(f, k1=12, k2=4, radius=0.7, tile=64)
    assert len(whole.first) > 200
    for a, b in zip(whole, parts):
        np.testing.assert_array_equal(a, b)


def test_entries_from_gathered_tiles_equal_the_tiled_matrix():
    # d_at multiplies tiles of gathered items; each entry must keep the bits of its own tile of D.
    f = planted(150, seed=7, dim=48)
    src = kreciprocal._FeatureSource(f, tile=32)
    src.nearest(8, 4)  # sets the row maxima
    rng = np.random.default_rng(0)
    first, second = rng.integers(150, size=700), rng.integers(150, size=700)  # both orders, some i = j
    cosine = np.asarray(kreciprocal.cosine_distances(f, tile=32))
    want = kreciprocal._normalise_entries(jnp.asarray(cosine[first, second]), src.row_max,
                                          jnp.asarray(first, jnp.int32))
    got = src.d_at(first, second)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    row = src.d_at(np.full(150, 3), np.arange(150))  # one whole row, across every tile
    np.testing.assert_array_equal(np.asarray(row), np.asarray(kreciprocal._normalise_entries(
        jnp.asarray(cosine[3]), src.row_max, jnp.full(150, 3, jnp.int32))))


def test_candidate_pairs_hold_every_pair_with_enough_overlap():
    f = planted(150, seed=5, per_id=8)
    enc = kreciprocal.feature_encoding(f, k1=10, k2=3)
    cols, vals = np.asarray(enc.cols), np.asarray(enc.vals)
    v = np.zeros((150, 151))
    np.put_along_axis(v, cols, vals, axis=1)
    m = np.minimum(v[:, None, :150], v[None, :, :150]).sum(-1)
    for threshold in (0.0, 0.3, 0.6):
        first, second = kreciprocal.candidate_pairs(enc, min_overlap=threshold)
        found = np.zeros((150, 150), bool)
        found[first, second] = True
        need = np.triu(m >= threshold if threshold > 0 else m > 0, 1)
        assert not np.any(need & ~found)
        assert np.all(first < second)
        if threshold == 0.0:
            np.testing.assert_array_equal(found, need)  # exactly the overlapping pairs
        else:
            assert found.sum() < (m > 0).sum() / 2  # and the filter does prune


def test_dense_jaccard_chunked_matches_numpy(monkeypatch):
    f = planted(40, seed=6, dim=8)
    dist = jnp.asarray(np.maximum(1 - f @ f.T, 0))
    d, v, nonzeros = kreciprocal.dense_encoding(dist, k1=6, k2=2)
    whole = np.asarray(kreciprocal.dense_jaccard(d, v, nonzeros, num_query=10, gallery_start=10, lambda_value=0.0))
    k = kreciprocal._next_pow2(int(jnp.max(nonzeros[:10])))
    # chunk = _CHUNK_ELEMENTS // (k · Ng) = 3: four chunks of queries, the last one short.
    monkeypatch.setattr(kreciprocal, "_CHUNK_ELEMENTS", 3 * k * 30)
    chunked = np.asarray(kreciprocal.dense_jaccard(d, v, nonzeros, num_query=10, gallery_start=10, lambda_value=0.3))
    np.testing.assert_allclose(whole, _numpy_jaccard(v, np.arange(10), np.arange(10, 40)), atol=1e-6)
    np.testing.assert_array_equal(chunked, kreciprocal.combine(jnp.asarray(whole), d[:10, 10:], lambda_value=0.3))


def test_exp_neg_is_accurate_and_the_same_at_every_shape():
    x = np.random.default_rng(7).uniform(0, 1, size=10007).astype(np.float32)
    x[:3] = [0.0, 1.0, 0.5]
    got = np.asarray(jax.jit(kreciprocal.exp_neg)(x))
    np.testing.assert_allclose(got, np.exp(-x.astype(np.float64)), rtol=5e-7)
    assert got[0] == 1.0
    for idx in (np.arange(7), np.arange(5, 69).reshape(8, 8), np.arange(10000).reshape(100, 100).T):
        np.testing.assert_array_equal(np.asarray(jax.jit(kreciprocal.exp_neg)(x[idx])), got[idx])


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"N ≥ 2 items and k1, k2 ≥ 1, got N=1"):
        kreciprocal.feature_encoding(np.ones((1, 4), np.float32), k1=3, k2=1)
    with pytest.raises(ValueError, match=r"square \[N, N\] matrix"):
        kreciprocal.matrix_rerank(np.zeros((3, 4)), 1, k1=2, k2=1, lambda_value=0.3)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_sparse_dbscan_equals_dense_at_2000(seed):
    """The acceptance case: N = 2,000, plus's MARS settings and the demo's, several planted layouts."""
    f = planted(2000, seed=10 + seed, dim=64, per_id=(13, 8, 20)[seed], cameras=(6, 3, 8)[seed],
                camera_offset=(0.5, 1.0, 0.3)[seed], duplicates=(0, 25, 0)[seed])
    cosine = kreciprocal.cosine_distances(f)
    for k1, k2, eps, min_samples in ((30, 6, 0.6, 4), (6, 2, 0.45, 2)):
        dense = np.asarray(kreciprocal.jaccard_distances(cosine, k1=k1, k2=k2))
        graph = kreciprocal.jaccard_graph(f, k1=k1, k2=k2, radius=eps)
        _assert_graph_is_dense(graph, dense, eps)
        labels = clustering.dbscan(graph, eps, min_samples)
        np.testing.assert_array_equal(labels, clustering.dbscan(dense, eps, min_samples))
        assert labels.max() >= 10
