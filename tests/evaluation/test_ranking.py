"""Ranking metrics against a plain numpy oracle, hand-computed cases, and input errors."""
import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svreid_jax.evaluation import ranking


# ---------------------------------------------------------------------------------------------------------
# The oracle: one query at a time, a full stable argsort, the rules of docs/METHOD.md §7.3 written out.


def oracle(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, q_clothes=None, g_clothes=None,
           mode="standard"):
    """Returns (cmc [max_rank], mAP, per-query AP (NaN if skipped), per-query first rank (-1), num_valid)."""
    distmat = np.asarray(distmat)
    cmcs, aps = [], []
    per_query = np.full(len(q_pids), np.nan)
    first = np.full(len(q_pids), -1)
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i], kind="stable")  # ties: ascending gallery index
        same_pid = g_pids[order] == q_pids[i]
        same_cam = g_camids[order] == q_camids[i]
        if mode == "standard":
            good = same_pid & ~same_cam
            junk = same_pid & same_cam
        else:
            same_clothes = g_clothes[order] == q_clothes[i]
            if mode == "same_clothes":
                good = same_pid & ~same_cam & same_clothes
                junk = same_pid & (same_cam | ~same_clothes)
            else:  # clothes_changing
                good = same_pid & ~same_cam & ~same_clothes
                junk = same_pid & (same_cam | same_clothes)
        matches = good[~junk]  # the ranking with junk removed
        if not matches.any():
            continue  # no good item: the query is skipped
        ranks = np.flatnonzero(matches)  # 0-based ranks of the good items, ascending
        cmc = np.zeros(max_rank)
        if ranks[0] < max_rank:
            cmc[ranks[0]:] = 1.0
        ap = np.mean(np.arange(1, len(ranks) + 1) / (ranks + 1.0))
        cmcs.append(cmc)
        aps.append(ap)
        per_query[i] = ap
        first[i] = ranks[0]
    if not aps:
        return np.zeros(max_rank), 0.0, per_query, first, 0
    return np.mean(cmcs, axis=0), float(np.mean(aps)), per_query, first, len(aps)


def assert_matches_oracle(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50, **kw):
    res = ranking.evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank, **kw)
    kw.pop("chunk_size", None)
    cmc, mAP, per_query, first, num_valid = oracle(np.asarray(distmat, np.float32), q_pids, g_pids, q_cams, g_cams,
                                            max_rank=max_rank, **kw)
    assert res.cmc.shape == (max_rank,)
    np.testing.assert_allclose(res.cmc, cmc, atol=1e-6, rtol=0)
    assert abs(res.mAP - mAP) <= 1e-6
    np.testing.assert_allclose(res.average_precision, per_query, atol=1e-6, rtol=0)  # NaN where skipped
    np.testing.assert_array_equal(res.first_match_rank, first)
    assert res.num_valid_queries == num_valid
    assert res.num_skipped_queries == len(q_pids) - num_valid
    return res


# ---------------------------------------------------------------------------------------------------------
# Hand-computed cases


def test_two_queries_five_gallery_by_hand():
    # q0: pid 1, cam 0.  q1: pid 2, cam 0.
    q_pids, q_cams = np.array([1, 2]), np.array([0, 0])
    # g0 pid1 cam1 | g1 pid2 cam1 | g2 pid1 cam0 | g3 pid1 cam2 | g4 pid3 cam1
    g_pids, g_cams = np.array([1, 2, 1, 1, 3]), np.array([1, 1, 0, 2, 1])
    distmat = np.array([
        # q0 order: g2 (junk: same pid, same cam) g0 (good) g1 g4 g3 (good)
        # junk removed: g0 rank 0, g1 1, g4 2, g3 rank 3 -> AP = (1/1 + 2/4) / 2 = 0.75, first rank 0
        [0.1, 0.2, 0.05, 0.4, 0.3],
        # q1 order: g0 g2 g1 (good) g4 g3 -> good at rank 2 -> AP = 1/3, first rank 2
        [0.1, 0.3, 0.2, 0.5, 0.4],
    ], np.float32)
    res = ranking.evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    np.testing.assert_allclose(res.average_precision, [0.75, 1 / 3], atol=1e-12)
    assert res.mAP == pytest.approx((0.75 + 1 / 3) / 2, abs=1e-12)
    np.testing.assert_allclose(res.cmc, [0.5, 0.5, 1.0, 1.0, 1.0])  # R1: only q0; R3: both
    np.testing.assert_array_equal(res.first_match_rank, [0, 2])
    np.testing.assert_array_equal(res.num_good, [2, 1])
    assert (res.num_valid_queries, res.num_skipped_queries) == (2, 0)
    cmc, mAP = ranking.cmc_map(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    np.testing.assert_array_equal(cmc, res.cmc)
    assert mAP == res.mAP


def test_ties_follow_gallery_index():
    # every distance equal: the ranking is the gallery order 0, 1, 2, 3 (a stable sort)
    q_pids, q_cams = np.array([1]), np.array([0])
    g_pids, g_cams = np.array([9, 1, 9, 1]), np.array([1, 1, 1, 2])
    distmat = np.zeros((1, 4), np.float32)
    # goods g1 and g3 at ranks 1 and 3 -> AP = (1/2 + 2/4) / 2 = 0.5; CMC starts at rank 2
    res = ranking.evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=4)
    assert res.mAP == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_allclose(res.cmc, [0, 1, 1, 1])
    # a junk item tied with a good one and before it by index is removed, not counted
    g_pids, g_cams = np.array([1, 1, 9]), np.array([0, 1, 1])  # g0 junk, g1 good, g2 negative
    res = ranking.evaluate_ranking(np.zeros((1, 3), np.float32), q_pids, g_pids, q_cams, g_cams, max_rank=3)
    assert res.mAP == 1.0 and res.first_match_rank[0] == 0
    # -0.0 and 0.0 are equal distances: the index decides
    g_pids, g_cams = np.array([9, 1]), np.array([1, 1])
    res = ranking.evaluate_ranking(np.array([[0.0, -0.0]], np.float32), q_pids, g_pids, q_cams, g_cams,
                                   max_rank=2)
    assert res.first_match_rank[0] == 1 and res.mAP == 0.5


def test_clothes_modes_by_hand():
    # q0: pid 1, cam 0, clothes A(0)
    q_pids, q_cams, q_clothes = np.array([1]), np.array([0]), np.array([0])
    # g0 pid1 cam1 clothes A | g1 pid1 cam1 clothes B | g2 pid1 cam0 clothes B | g3 pid2 cam1 clothes A
    g_pids, g_cams, g_clothes = np.array([1, 1, 1, 2]), np.array([1, 1, 0, 1]), np.array([0, 1, 1, 0])
    distmat = np.array([[0.4, 0.1, 0.0, 0.2]], np.float32)  # order: g2 g1 g3 g0
    kw = dict(q_clothes=q_clothes, g_clothes=g_clothes, max_rank=4)
    # standard: good g0, g1; junk g2 -> g1 r0, g3 r1, g0 r2 -> AP = (1/1 + 2/3) / 2 = 5/6
    res = ranking.evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams, mode="standard", **kw)
    assert res.mAP == pytest.approx(5 / 6, abs=1e-12)
    # same clothes: good g0; junk g2 (same cam) and g1 (other clothes) -> g3 r0, g0 r1 -> AP = 1/2
    res = ranking.evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams, mode="same_clothes", **kw)
    assert res.mAP == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_allclose(res.cmc, [0, 1, 1, 1])
    # clothes changing: good g1; junk g2 and g0 (same clothes) -> g1 r0 -> AP = 1
    res = ranking.evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams, mode="clothes_changing", **kw)
    assert res.mAP == 1.0
    np.testing.assert_allclose(res.cmc, [1, 1, 1, 1])


def test_skipped_queries_and_no_valid_query():
    q_pids, q_cams = np.array([1, 5, 2]), np.array([0, 0, 0])
    g_pids, g_cams = np.array([1, 2, 3]), np.array([1, 0, 1])
    distmat = np.array([[0.3, 0.1, 0.2], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], np.float32)
    # q0: good g0 at rank 2 -> AP 1/3. q1: pid 5 absent -> skipped. q2: only g1, same cam (junk) -> skipped
    res = ranking.evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=3)
    assert (res.num_valid_queries, res.num_skipped_queries) == (1, 2)
    assert res.mAP == pytest.approx(1 / 3)
    np.testing.assert_array_equal(res.first_match_rank, [2, -1, -1])
    assert np.isnan(res.average_precision[1:]).all()
    # no valid query at all: zeros, and the result says so
    res = ranking.evaluate_ranking(distmat[1:], q_pids[1:], g_pids, q_cams[1:], g_cams, max_rank=3)
    assert not res.has_valid_queries and res.num_skipped_queries == 2
    assert res.mAP == 0.0 and not res.cmc.any()
    assert res.summary()["num_valid_queries"] == 0.0
    # an empty gallery or no queries: nothing valid either
    res = ranking.evaluate_ranking(np.zeros((2, 0), np.float32), [1, 2], [], [0, 0], [], max_rank=5)
    assert res.num_valid_queries == 0 and res.cmc.shape == (5,)
    res = ranking.evaluate_ranking(np.zeros((0, 3), np.float32), [], g_pids, [], g_cams)
    assert res.num_valid_queries == 0 and res.num_skipped_queries == 0


def test_max_rank_beyond_gallery_and_deep_matches():
    # first good at rank 3 with max_rank 2: CMC stays 0; max_rank 10 > gallery size keeps its length
    q_pids, q_cams = np.array([1]), np.array([0])
    g_pids, g_cams = np.array([2, 3, 4, 1]), np.array([1, 1, 1, 1])
    distmat = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
    res = ranking.evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=2)
    np.testing.assert_array_equal(res.cmc, [0, 0])
    assert res.mAP == 0.25
    res = ranking.evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    np.testing.assert_array_equal(res.cmc, [0, 0, 0] + [1] * 7)


def test_small_problems_share_compiled_kernels():
    rng = np.random.default_rng(2)

    def run(nq, ng):  # every query: pid 1, three good matches, other pids elsewhere
        g_pids = np.full(ng, 2)
        g_pids[[0, 5, 9]] = 1
        ranking.evaluate_ranking(rng.random((nq, ng), np.float32), np.ones(nq, int), g_pids,
                                 np.zeros(nq, int), np.ones(ng, int))

    run(5, 70)
    before = ranking._rank_kernel._cache_size()
    for nq, ng in [(6, 90), (8, 100), (3, 128)]:  # the same power-of-two buckets: no new executable
        run(nq, ng)
    assert ranking._rank_kernel._cache_size() == before


def test_summary_keys():
    res = ranking.evaluate_ranking(np.zeros((1, 2), np.float32), [1], [1, 2], [0], [1, 1], max_rank=10)
    assert set(res.summary()) == {"rank1", "rank5", "rank10", "mAP", "num_valid_queries", "num_skipped_queries"}


# ---------------------------------------------------------------------------------------------------------
# Random cases against the oracle


def _random_problem(rng, nq, ng, num_pids, num_cams, num_clothes=3, decimals=None):
    q_pids = rng.integers(0, num_pids, nq)
    g_pids = rng.integers(0, num_pids, ng)
    q_cams, g_cams = rng.integers(0, num_cams, nq), rng.integers(0, num_cams, ng)
    q_clothes, g_clothes = rng.integers(0, num_clothes, nq), rng.integers(0, num_clothes, ng)
    distmat = rng.standard_normal((nq, ng)).astype(np.float32)
    if decimals is not None:
        distmat = np.round(distmat, decimals)  # many exact ties
    return distmat, q_pids, g_pids, q_cams, g_cams, q_clothes, g_clothes


@pytest.mark.parametrize("mode", ranking.MODES)
@pytest.mark.parametrize("decimals", [None, 1])
def test_random_against_oracle(mode, decimals):
    rng = np.random.default_rng(zlib.crc32(f"{mode}/{decimals}".encode()))  # not hash(): PYTHONHASHSEED
    # few pids: many good items per query, so queries span several kernel rows (4 goods per row)
    d, qp, gp, qc, gc, qcl, gcl = _random_problem(rng, 40, 300, num_pids=6, num_cams=3, decimals=decimals)
    assert_matches_oracle(d, qp, gp, qc, gc, max_rank=20, q_clothes=qcl, g_clothes=gcl, mode=mode)
    # small chunks: several device steps, a partial last step, a padded step bucket
    assert_matches_oracle(d, qp, gp, qc, gc, max_rank=20, q_clothes=qcl, g_clothes=gcl, mode=mode,
                          chunk_size=3)


@pytest.mark.parametrize("use_int8_dot", [True, False])
def test_both_count_reductions(monkeypatch, use_int8_dot):
    # CPU counts with an int8 matmul; GPU/TPU with a fused sum. Both must agree with the oracle.
    monkeypatch.setattr(ranking, "_use_int8_dot", lambda platform, num_gallery: use_int8_dot)
    rng = np.random.default_rng(17)
    d, qp, gp, qc, gc, _, _ = _random_problem(rng, 30, 200, num_pids=5, num_cams=3, decimals=1)
    assert_matches_oracle(d, qp, gp, qc, gc, max_rank=15, chunk_size=4)


@pytest.mark.parametrize("sort_above", [0, 20])
@pytest.mark.parametrize("decimals", [None, 1])
def test_rows_ranked_by_sorting(monkeypatch, sort_above, decimals):
    # Queries with more than _SORT_ABOVE good items take their ranks from one sort of their row: with 0 every
    # query does, with 20 the queries of the two crowded pids do and the others are counted.
    monkeypatch.setattr(ranking, "_SORT_ABOVE", sort_above)
    rng = np.random.default_rng(23 + sort_above)
    d, qp, gp, qc, gc, qcl, gcl = _random_problem(rng, 40, 300, num_pids=12, num_cams=3, decimals=decimals)
    gp[:150] = rng.integers(0, 2, 150)  # pids 0 and 1: ~50 good items per query
    res = assert_matches_oracle(d, qp, gp, qc, gc, max_rank=20, q_clothes=qcl, g_clothes=gcl, chunk_size=3)
    crowded = res.num_good > sort_above
    assert crowded.any() and (sort_above == 0 or (~crowded & (res.num_good > 0)).any())
    # special values through the sorted path: NaN last by index, -0.0 == 0.0, subnormals ordered
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-39, -1e-39], np.float32)
    mask = rng.random(d.shape) < 0.4
    d[mask] = rng.choice(special, mask.sum())
    assert_matches_oracle(d, qp, gp, qc, gc, max_rank=20)


def test_large_matrix_unpadded_path():
    # >= 2**20 entries: the matrix is used as is (no power-of-two padding); ties from rounding
    rng = np.random.default_rng(7)
    d, qp, gp, qc, gc, _, _ = _random_problem(rng, 130, 8100, num_pids=300, num_cams=6, decimals=2)
    assert d.size >= ranking._PAD_BELOW
    assert_matches_oracle(jnp.asarray(d), qp, gp, qc, gc)


def test_mars_like_labels_and_input_types():
    rng = np.random.default_rng(3)
    nq, ng, ids = 200, 900, 60
    q_pids = rng.integers(1, ids, nq)
    g_pids = np.concatenate([rng.integers(1, ids, ng - 100), np.zeros(100, int)])  # pid 0: distractors
    q_cams, g_cams = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    feats_q, feats_g = rng.standard_normal((nq, 64)), rng.standard_normal((ng, 64))
    feats_q += 8 * np.eye(ids, 64)[q_pids]  # one direction per identity (distractors: pid 0 too)
    feats_g += 8 * np.eye(ids, 64)[g_pids]
    d = ranking.pairwise_distance(feats_q, feats_g, "cosine")
    res = assert_matches_oracle(d, q_pids, g_pids, q_cams, g_cams)
    assert res.mAP > 0.5  # the identity signal is found
    # numpy float32, numpy float64 (cast to float32) and a jax array give the same numbers
    for variant in (np.asarray(d), np.asarray(d, np.float64), jnp.asarray(d)):
        other = ranking.evaluate_ranking(variant, q_pids, g_pids, q_cams, g_cams)
        np.testing.assert_array_equal(other.cmc, res.cmc)
        assert other.mAP == res.mAP
    # labels as lists and as strings work too
    other = ranking.evaluate_ranking(d, [f"p{p:03d}" for p in q_pids], [f"p{p:03d}" for p in g_pids],
                                     list(q_cams), list(g_cams))
    assert other.mAP == res.mAP


def test_non_finite_and_subnormal_distances():
    rng = np.random.default_rng(11)
    d, qp, gp, qc, gc, _, _ = _random_problem(rng, 20, 60, num_pids=4, num_cams=2, decimals=1)
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-39, -1e-39, 2e-39], np.float32)
    mask = rng.random(d.shape) < 0.4
    d[mask] = rng.choice(special, mask.sum())  # NaN last (ties by index), -0.0 == 0.0, subnormals ordered
    assert_matches_oracle(d, qp, gp, qc, gc, max_rank=10)
    # XLA compares floats with subnormals flushed to zero; the ranking must not: 1e-39 comes after 0.0
    res = ranking.evaluate_ranking(np.array([[1e-39, 0.0]], np.float32), [1], [1, 2], [0], [1, 1], max_rank=2)
    assert res.first_match_rank[0] == 1


def test_order_key_matches_numpy_sort():
    # the int32 keys the kernel compares must order floats exactly like np.argsort (NaN last, -0 == 0,
    # subnormals ordered): random bit patterns cover every class of float32
    rng = np.random.default_rng(0)
    special = [0, -2**31, 1, -2**31 + 1, 0x7F800000, -0x800000, 0x7FC00000, -0x400000, 0x7F7FFFFF, 0x800000]
    bits = np.concatenate([rng.integers(-2**31, 2**31, 100_000), special]).astype(np.int32)
    x = bits.view(np.float32)
    keys = np.asarray(ranking._order_key(jnp.asarray(x)))
    np.testing.assert_array_equal(np.lexsort((np.arange(len(x)), keys)), np.argsort(x, kind="stable"))


@st.composite
def problems(draw):
    nq = draw(st.integers(1, 8))
    ng = draw(st.integers(1, 40))
    ints = lambda n, hi: np.array(draw(st.lists(st.integers(0, hi), min_size=n, max_size=n)))
    # distances from a handful of values (heavy ties) or arbitrary floats
    special = [-1.0, -0.0, 0.0, 0.5, 1e-39, -1e-39, np.inf, -np.inf, np.nan]
    values = st.sampled_from(special) if draw(st.booleans()) else st.floats(width=32, allow_nan=True)
    d = np.array(draw(st.lists(values, min_size=nq * ng, max_size=nq * ng)), np.float32).reshape(nq, ng)
    mode = draw(st.sampled_from(ranking.MODES))
    return d, ints(nq, 3), ints(ng, 3), ints(nq, 2), ints(ng, 2), ints(nq, 1), ints(ng, 1), mode


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.integers(1, 12))
def test_hypothesis_against_oracle(problem, max_rank):
    d, qp, gp, qc, gc, qcl, gcl, mode = problem
    assert_matches_oracle(d, qp, gp, qc, gc, max_rank=max_rank, q_clothes=qcl, g_clothes=gcl, mode=mode)


# ---------------------------------------------------------------------------------------------------------
# Errors


def _ok_args():
    return (np.zeros((2, 3), np.float32), np.array([1, 2]), np.array([1, 2, 3]), np.array([0, 0]),
            np.array([1, 1, 1]))


@pytest.mark.parametrize("index,value,message", [
    (1, np.array([1, 2, 3]), "q_pids has 3 entries but distmat has 2 rows"),
    (2, np.array([1, 2]), "g_pids has 2 entries but distmat has 3 columns"),
    (3, np.array([0]), "q_camids has 1 entries but distmat has 2 rows"),
    (4, np.array([[1, 1, 1]]), "g_camids must be 1-D"),
    (0, np.zeros(3, np.float32), "distmat must be 2-D"),
])
def test_shape_errors(index, value, message):
    args = list(_ok_args())
    args[index] = value
    with pytest.raises(ValueError, match=message):
        ranking.evaluate_ranking(*args)


def test_mode_and_option_errors():
    args = _ok_args()
    with pytest.raises(ValueError, match="unknown ranking mode 'cc'"):
        ranking.evaluate_ranking(*args, mode="cc")
    for mode in ("same_clothes", "clothes_changing"):
        with pytest.raises(ValueError, match=f"mode '{mode}' needs clothes ids"):
            ranking.cmc_map(*args, mode=mode)
        with pytest.raises(ValueError, match="needs clothes ids"):
            ranking.cmc_map(*args, mode=mode, q_clothes=np.zeros(2))
    with pytest.raises(ValueError, match="pass both q_clothes and g_clothes"):
        ranking.evaluate_ranking(*args, g_clothes=np.zeros(3))
    with pytest.raises(ValueError, match="q_clothes has 3 entries but distmat has 2 rows"):
        ranking.evaluate_ranking(*args, mode="same_clothes", q_clothes=np.zeros(3), g_clothes=np.zeros(3))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_rank must be a positive integer"):
            ranking.evaluate_ranking(*args, max_rank=bad)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        ranking.evaluate_ranking(*args, chunk_size=0)


# ---------------------------------------------------------------------------------------------------------
# Distances


def _np_distance(q, g, metric):
    q, g = q.astype(np.float64), g.astype(np.float64)
    if metric == "cosine":
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        gn = g / np.linalg.norm(g, axis=1, keepdims=True)
        return -qn @ gn.T
    if metric == "inner":
        return -q @ g.T
    return np.sqrt(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1))


@pytest.mark.parametrize("metric", ranking.METRICS)
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_pairwise_distance_matches_numpy(metric, chunk_size):
    rng = np.random.default_rng(5)
    q = rng.standard_normal((23, 16)).astype(np.float32)
    g = rng.standard_normal((31, 16)).astype(np.float32) * 3
    out = ranking.pairwise_distance(q, g, metric, chunk_size=chunk_size)
    assert out.shape == (23, 31) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), _np_distance(q, g, metric), rtol=1e-5, atol=1e-5)


def test_pairwise_distance_edge_cases():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    # identical vectors: euclidean 0 (never NaN from rounding below 0); a zero vector: cosine distance 0
    np.testing.assert_allclose(np.asarray(ranking.pairwise_distance(x, x, "euclidean")), [[0, 5], [5, 0]],
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(ranking.pairwise_distance(x, x, "cosine")), [[-1, 0], [0, 0]],
                               atol=1e-7)
    np.testing.assert_allclose(np.asarray(ranking.pairwise_distance(x, x, "inner")), [[-25, 0], [0, 0]])
    with pytest.raises(ValueError, match="unknown distance metric 'l1'"):
        ranking.pairwise_distance(x, x, "l1")
    with pytest.raises(ValueError, match="feature sizes differ: 2 vs 3"):
        ranking.pairwise_distance(x, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="features must be 2-D"):
        ranking.pairwise_distance(x[0], x)
