"""k-reciprocal re-ranking: against a plain NumPy transcription of Zhong et al.'s algorithm, and a toy case."""
import jax.numpy as jnp
import numpy as np
import pytest

from svreid_jax import kreciprocal
from svreid_jax.evaluation import ranking, rerank


def numpy_rerank(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3):
    """The algorithm as the widely used NumPy code writes it: loops, sets, an inverted index."""
    dist = np.concatenate([np.concatenate([q_q, q_g], axis=1), np.concatenate([q_g.T, g_g], axis=1)], axis=0)
    dist = np.power(dist, 2).astype(np.float32)
    dist = np.transpose(dist / np.max(dist, axis=0))
    v = np.zeros_like(dist, dtype=np.float32)
    initial_rank = np.argsort(dist).astype(np.int32)
    num_query, num_all = q_g.shape[0], dist.shape[0]
    half = int(np.around(k1 / 2.0))
    for i in range(num_all):
        forward = initial_rank[i, :k1 + 1]
        backward = initial_rank[forward, :k1 + 1]
        recip = forward[np.where(backward == i)[0]]
        expansion = recip
        for c in recip:
            c_forward = initial_rank[c, :half + 1]
            c_backward = initial_rank[c_forward, :half + 1]
            c_recip = c_forward[np.where(c_backward == c)[0]]
            if len(np.intersect1d(c_recip, recip)) > 2.0 / 3 * len(c_recip):
                expansion = np.append(expansion, c_recip)
        expansion = np.unique(expansion)
        weight = np.exp(-dist[i, expansion])
        v[i, expansion] = weight / np.sum(weight)
    dist = dist[:num_query]
    if k2 != 1:
        v = np.stack([np.mean(v[initial_rank[i, :k2], :], axis=0) for i in range(num_all)]).astype(np.float32)
    inverted = [np.where(v[:, j] != 0)[0] for j in range(num_all)]
    jaccard = np.zeros_like(dist, dtype=np.float32)
    for i in range(num_query):
        temp_min = np.zeros((1, num_all), dtype=np.float32)
        nonzero = np.where(v[i, :] != 0)[0]
        for j in nonzero:
            rows = inverted[j]
            temp_min[0, rows] = temp_min[0, rows] + np.minimum(v[i, j], v[rows, j])
        jaccard[i] = 1 - temp_min / (2.0 - temp_min)
    final = jaccard * (1 - lambda_value) + dist * lambda_value
    return final[:, num_query:]


def _features(seed, num_ids, per_id, dim, noise):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    pids = np.repeat(np.arange(num_ids), per_id)
    feats = centres[pids] + noise * rng.normal(size=(len(pids), dim))
    return feats.astype(np.float32), pids


def _blocks(q, g):
    def euclid(a, b):
        return np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0)).astype(np.float32)
    return euclid(q, g), euclid(q, q), euclid(g, g)


@pytest.mark.parametrize("nq, ng, k1, k2, lam", [(12, 40, 20, 6, 0.3), (9, 31, 5, 3, 0.5), (7, 20, 4, 1, 0.0)])
def test_matches_numpy_on_random_features(nq, ng, k1, k2, lam):
    feats, _ = _features(seed=nq, num_ids=8, per_id=(nq + ng) // 8 + 1, dim=16, noise=0.8)
    rng = np.random.default_rng(1)
    feats = feats[rng.permutation(len(feats))[:nq + ng]]
    q_g, q_q, g_g = _blocks(feats[:nq], feats[nq:])
    expected = numpy_rerank(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
    got = np.asarray(rerank.k_reciprocal(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam))
    assert got.shape == (nq, ng)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_features_entry_matches_numpy_with_cosine():
    feats, _ = _features(seed=3, num_ids=6, per_id=6, dim=12, noise=0.7)
    q, g = feats[:10], feats[10:]
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    expected = numpy_rerank(1 - qn @ gn.T, 1 - qn @ qn.T, 1 - gn @ gn.T)
    got = np.asarray(rerank.rerank_features(q, g, metric="cosine"))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_rerank_fixes_a_toy_ranking():
    """The query's nearest item is of another identity, but it sits in a tight cluster of its own identity
    whose k1 nearest items leave the query out; the query's four true matches (at distance 1, around it)
    do have the query among their nearest. Re-ranking puts the true matches first: R-1 0 → 1, mAP up to 1.
    """
    query = np.zeros((1, 3), np.float32)
    matches = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], np.float32)  # identity 1, distance 1
    # identity 2: the impostor at distance 0.9, and seven items stacked just behind it
    impostors = np.array([[0, 0, 0.9]] + [[0.03 * np.cos(k), 0.03 * np.sin(k), 1.05 + 0.05 * k] for k in range(7)],
                         np.float32)
    gallery = np.concatenate([matches, impostors])
    g_pids = np.array([1] * 4 + [2] * 8)
    plain = np.asarray(ranking.pairwise_distance(query, gallery, metric="euclidean"))
    reranked = np.asarray(rerank.rerank_features(query, gallery, metric="euclidean", k1=5, k2=1))
    np.testing.assert_allclose(reranked, numpy_rerank(*_blocks(query, gallery), k1=5, k2=1), atol=1e-5)
    assert g_pids[np.argmin(plain[0])] == 2
    assert set(np.argsort(reranked[0])[:4]) == {0, 1, 2, 3}
    cams = dict(q_camids=np.array([0]), g_camids=np.ones(12, int))
    before = ranking.evaluate_ranking(plain, np.array([1]), g_pids, **cams)
    after = ranking.evaluate_ranking(reranked, np.array([1]), g_pids, **cams)
    assert before.cmc[0] == 0.0 and before.mAP == pytest.approx((1 / 2 + 2 / 3 + 3 / 4 + 4 / 5) / 4)
    assert after.cmc[0] == 1.0 and after.mAP == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="shapes do not fit"):
        rerank.k_reciprocal(np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="num_query"):
        rerank.rerank_full(np.zeros((4, 4)), 4)


@pytest.mark.parametrize("nq, k1, k2", [(15, 20, 6), (40, 6, 1)])
def test_sparse_rerank_equals_the_dense_reference_bit_for_bit(nq, k1, k2):
    feats, _ = _features(seed=11, num_ids=12, per_id=10, dim=16, noise=0.8)
    dist = np.asarray(rerank.non_negative_distances(feats, "euclidean"))
    d, v, nonzeros = kreciprocal.dense_encoding(jnp.asarray(dist), k1=k1, k2=k2)
    dense = np.asarray(kreciprocal.dense_jaccard(d, v, nonzeros, num_query=nq, gallery_start=nq, lambda_value=0.3))
    got = np.asarray(rerank.rerank_full(dist, nq, k1=k1, k2=k2, lambda_value=0.3))
    np.testing.assert_array_equal(got, dense)
    assert np.any(got < 0.3 * np.asarray(d)[:nq, nq:] + 0.7)  # some pairs do overlap (J < 1)
