"""Re-ID ranking metrics: distance matrices, CMC and mAP, computed in JAX and exact.

Protocol (docs/METHOD.md §7.3, the reference `utils/eval_metrics.py`, torchreid's Market/MARS metric and the
CAL clothes-aware variants). For each query:

* good = same pid AND different camid; junk = same pid AND same camid (mode 'standard');
* 'same_clothes': good = same pid, different cam, same clothes; junk = same pid and (same cam or
  different clothes);
* 'clothes_changing': good = same pid, different cam, different clothes; junk = same pid and (same cam or
  same clothes);
* junk items are removed from the ranking; a query with no good item is skipped (left out of the
  averages);
* CMC[k] = 1 if the first good item (after junk removal) is at 0-based rank <= k;
* AP = (1/n_good) * sum_{i=1..n_good} i / (r_i + 1), r_i the 0-based rank of the i-th good item after junk
  removal (non-interpolated AP);
* CMC and AP are averaged over the valid queries. With no valid query, CMC is zeros and mAP is 0, and the
  result says so (`num_valid_queries == 0`).

Ties. Gallery items are ordered by ascending distance, and items at exactly equal distance by ascending
gallery index: the order of a stable sort (`np.argsort(kind='stable')`). The reference uses numpy's default
(unstable) argsort, so on exact ties it may order differently; with real float features ties are rare. Order
is decided on float32 values (the matrix is cast to float32) exactly as numpy orders them: -0.0 and 0.0 are
equal, subnormal numbers keep their order, and every NaN sorts after +inf (NaNs among themselves by index).
XLA treats subnormals as zero in float comparisons (denormals-are-zero on CPU), so the kernel compares
order-preserving int32 keys (the float bits, negatives flipped) rather than floats.

Algorithm. Only the ranks of the good items matter, and every good or junk item of a query has the
query's pid, so per query only its same-pid gallery items are special. For a good item j of query q,

    rank_j = A_j - J_j,   A_j = #{gallery k : (d_qk, k) < (d_qj, j)},   J_j = #{junk k : (d_qk, k) < (d_qj, j)}

and its position among the good items is i_j = 1 + #{good k : (d_qk, k) < (d_qj, j)}. A_j needs one pass
over the query's row per good item; this is the device work, done in jit-compiled steps of `chunk_size`
rows, each row carrying up to `_GOODS_PER_ROW` good items of one query (a query with more good matches
takes several rows), so the work is sum over queries of n_good * num_gallery comparisons, with no sort of
the row. A query with more than `_SORT_ABOVE` good items would cost more passes than sorting its row
costs, so its A_j come from one sort of its row instead (on the host: numpy sorts int64 (key, index)
composites far faster than XLA:CPU sorts rows); no query costs more than a sort of its row. J_j and i_j
only compare the few same-pid items of a query with each other; they are computed on the host from their
gathered order keys. AP and CMC are then accumulated in float64 on the host.

Compilation. The counting kernel is compiled per (distance-matrix shape, chunk rows, number-of-steps
bucket); the number of steps and the gathered same-pid list are padded to powers of two, and small
matrices (< 2**20 entries) are padded with NaN to power-of-two shapes (padding never changes a count), so
repeated evaluations and tests of many sizes reuse a few executables. Large matrices are not copied: their
exact shape is compiled once, which is what a training run needs.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from svreid_jax import ops

METRICS = ("cosine", "euclidean", "inner")
MODES = ("standard", "same_clothes", "clothes_changing")

_GOODS_PER_ROW = 4  # good items handled per kernel row; more per row wastes padding, fewer re-reads rows
_SORT_ABOVE = 64  # queries with more good items get their ranks from one sort of their row: on CPU one
#                   sort of a MARS-wide row costs about as much as 64 counting passes (benchmarks/ranking.py)
_PAD_BELOW = 1 << 20  # matrices with fewer entries are padded to power-of-two shapes (fewer recompiles)
_MIN_SHAPE = (8, 128)  # smallest padded matrix; tiny problems then share one executable
_MIN_ROWS, _MIN_REL = 16, 64  # smallest buckets of kernel rows per step and of gathered same-pid items
_F32_EXACT = 1 << 24  # the int8-matmul count is used only below this gallery size, where even a float32
#                       accumulator would be exact (XLA:CPU accumulates in int32; a cheap guard)


# ---------------------------------------------------------------------------------------------------------
# Distances


@functools.partial(jax.jit, static_argnames=("metric",))
def _distance_block(q: jax.Array, g: jax.Array, metric: str) -> jax.Array:
    hi = jax.lax.Precision.HIGHEST  # no bf16 passes on TPU/GPU: ranks are sensitive to small errors
    if metric == "cosine":
        return -jnp.matmul(ops.l2_normalise(q), ops.l2_normalise(g).T, precision=hi)
    if metric == "inner":
        return -jnp.matmul(q, g.T, precision=hi)
    # euclidean: sqrt(|q|^2 + |g|^2 - 2 q.g), clamped at 0 against rounding below zero
    sq = jnp.sum(q * q, axis=1)[:, None] + jnp.sum(g * g, axis=1)[None, :]
    return jnp.sqrt(jnp.maximum(sq - 2.0 * jnp.matmul(q, g.T, precision=hi), 0.0))


def pairwise_distance(query_features, gallery_features, metric: str = "cosine", *,
                      chunk_size: int | None = None) -> jax.Array:
    """Distance matrix float32 [Nq, Ng] between query [Nq, D] and gallery [Ng, D] features.

    metric:
      'cosine'    -- both sides L2-normalised, distance = -q.g (in [-1, 1]; the reference's choice for
                     MARS / iLIDS-VID / PRID / LS-VID);
      'inner'     -- -q.g on the raw features (the reference's choice for CCVID-style targets);
      'euclidean' -- plain (not squared) Euclidean distance, sqrt(|q|^2 + |g|^2 - 2 q.g) clamped at 0.
                     The expansion loses precision for nearly identical vectors (absolute error about
                     sqrt(eps * |q|^2)); that is the usual trade-off of torchreid and friends.
    chunk_size: if given, the queries are processed in blocks of this many rows (bounds the temporaries
      of the 'euclidean' formula; the result itself is always the full matrix).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown distance metric {metric!r}; expected one of {METRICS}")
    q = jnp.asarray(query_features, jnp.float32)
    g = jnp.asarray(gallery_features, jnp.float32)
    if q.ndim != 2 or g.ndim != 2:
        raise ValueError(f"features must be 2-D [N, D]; got query {q.shape} and gallery {g.shape}")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query and gallery feature sizes differ: {q.shape[1]} vs {g.shape[1]}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    if chunk_size is None or q.shape[0] <= chunk_size:
        return _distance_block(q, g, metric)
    blocks = [_distance_block(q[s:s + chunk_size], g, metric) for s in range(0, q.shape[0], chunk_size)]
    return jnp.concatenate(blocks, axis=0)


# ---------------------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass(frozen=True)
class RankingResult:
    """CMC / mAP of one evaluation.

    cmc: float64 [max_rank]; cmc[k] = fraction of valid queries whose first good match is at rank <= k+1.
    mAP: mean of `average_precision` over the valid queries (0.0 when there is none).
    num_valid_queries / num_skipped_queries: queries with / without any good match (they sum to Nq).
    average_precision: float64 [Nq], AP per query, NaN for skipped queries.
    first_match_rank: int64 [Nq], 0-based rank of the first good match after junk removal, -1 if skipped.
    num_good: int64 [Nq], good matches per query under `mode`.
    mode: the protocol used ('standard', 'same_clothes' or 'clothes_changing').
    """

    cmc: np.ndarray
    mAP: float
    num_valid_queries: int
    num_skipped_queries: int
    average_precision: np.ndarray
    first_match_rank: np.ndarray
    num_good: np.ndarray
    mode: str

    @property
    def has_valid_queries(self) -> bool:
        """False when no query had a good match: cmc and mAP are then zeros by convention, not results."""
        return self.num_valid_queries > 0

    def summary(self, ranks=(1, 5, 10, 20)) -> dict[str, float]:
        """{'rank1': ..., 'mAP': ..., 'num_valid_queries': ..., 'num_skipped_queries': ...} (fractions)."""
        out = {f"rank{r}": float(self.cmc[r - 1]) for r in ranks if r <= len(self.cmc)}
        out["mAP"] = float(self.mAP)
        out["num_valid_queries"] = float(self.num_valid_queries)
        out["num_skipped_queries"] = float(self.num_skipped_queries)
        return out


# ---------------------------------------------------------------------------------------------------------
# Input checks and the label-only (host) part


def _labels(name: str, values, expected: int, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != expected:
        raise ValueError(f"{name} has {arr.shape[0]} entries but distmat has {expected} {what}")
    return arr


def _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, q_clothes, g_clothes, mode,
                  chunk_size):
    if mode not in MODES:
        raise ValueError(f"unknown ranking mode {mode!r}; expected one of {MODES}")
    shape = tuple(getattr(distmat, "shape", np.shape(distmat)))
    if len(shape) != 2:
        raise ValueError(f"distmat must be 2-D [num_query, num_gallery], got shape {shape}")
    nq, ng = shape
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
    if chunk_size is not None and (not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    rows, cols = "rows (queries)", "columns (gallery items)"
    labels = [_labels("q_pids", q_pids, nq, rows), _labels("g_pids", g_pids, ng, cols),
              _labels("q_camids", q_camids, nq, rows), _labels("g_camids", g_camids, ng, cols)]
    if mode != "standard" and (q_clothes is None or g_clothes is None):
        raise ValueError(f"mode {mode!r} needs clothes ids: pass both q_clothes and g_clothes")
    if q_clothes is not None or g_clothes is not None:
        if q_clothes is None or g_clothes is None:
            raise ValueError("pass both q_clothes and g_clothes, or neither")
        labels += [_labels("q_clothes", q_clothes, nq, rows), _labels("g_clothes", g_clothes, ng, cols)]
    else:
        labels += [None, None]
    return nq, ng, labels


@dataclasses.dataclass
class _Relevant:
    """The same-pid (good or junk) gallery items of the valid queries, sorted by (query, gallery index)."""

    q: np.ndarray  # int64 [R] query index
    g: np.ndarray  # int64 [R] gallery index
    good: np.ndarray  # bool [R]
    num_good: np.ndarray  # int64 [Nq]


def _relevant_items(q_pids, g_pids, q_cams, g_cams, q_clothes, g_clothes, mode) -> _Relevant:
    nq = len(q_pids)
    order = np.argsort(g_pids, kind="stable")
    sorted_pids = g_pids[order]
    lo = np.searchsorted(sorted_pids, q_pids, side="left")
    hi = np.searchsorted(sorted_pids, q_pids, side="right")
    count = hi - lo
    q = np.repeat(np.arange(nq), count)
    offset = np.arange(len(q)) - np.repeat(np.cumsum(count) - count, count)
    g = order[np.repeat(lo, count) + offset]
    # every same-pid item is good or junk; only cameras (and clothes) decide which
    good = g_cams[g] != q_cams[q]
    if mode == "same_clothes":
        good &= g_clothes[g] == q_clothes[q]
    elif mode == "clothes_changing":
        good &= g_clothes[g] != q_clothes[q]
    num_good = np.bincount(q[good], minlength=nq).astype(np.int64)
    keep = num_good[q] > 0
    return _Relevant(q=q[keep], g=g[keep], good=good[keep], num_good=num_good)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# ---------------------------------------------------------------------------------------------------------
# The device part


def _order_key(d: jax.Array) -> jax.Array:
    """int32 keys with key(a) < key(b) iff a < b in numpy's float32 sort order (NaN last, -0.0 == 0.0).

    Integer comparisons are immune to the denormals-are-zero mode XLA runs in.
    """
    bits = jax.lax.bitcast_convert_type(d, jnp.int32)
    magnitude = bits & 0x7FFFFFFF  # IEEE floats are sign-magnitude: |x| is ordered like these integers
    key = jnp.where(bits < 0, -magnitude, magnitude)  # two's complement; -0.0 and 0.0 both map to 0
    return jnp.where(magnitude > 0x7F800000, jnp.iinfo(jnp.int32).max, key)  # any NaN (either sign): last


def _count_before(distmat: jax.Array, rows: jax.Array, cols: jax.Array, use_int8_dot: bool) -> jax.Array:
    """A[u, s] = #{k : (d[rows[u], k], k) < (d[rows[u], cols[u, s]], cols[u, s])}, int32 [U, S]."""
    x = _order_key(distmat[rows])  # [U, Ng]; XLA fuses the gather and the key into the comparison
    t = jnp.take_along_axis(x, cols, axis=1)  # [U, S] keys of the good items
    ng = distmat.shape[1]
    k = jax.lax.broadcasted_iota(jnp.int32, (1, 1, ng), 2)
    xb, tb = x[:, None, :], t[:, :, None]
    # item k comes before good item j: smaller distance, or equal distance and smaller index (stable order)
    before = jnp.where(k < cols[:, :, None], xb <= tb, xb < tb)  # [U, S, Ng] bool
    u, s = cols.shape
    if use_int8_dot:
        # XLA:CPU does not fuse a reduction with its producer, so the mask is materialised; as int8 it is a
        # quarter of the bytes, and an int8 x int8 -> int32 matmul sums it faster than a reduce (measured in
        # benchmarks/ranking.py). The 8 identical columns keep it a matrix-matrix product (faster than a
        # matrix-vector one here).
        ones = jnp.ones((ng, 8), jnp.int8)
        counts = jnp.dot(before.reshape(u * s, ng).astype(jnp.int8), ones, preferred_element_type=jnp.int32)
        return counts[:, 0].reshape(u, s)
    # GPU/TPU fuse the comparison into the reduction: nothing is materialised.
    return jnp.sum(before, axis=2, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=("use_int8_dot",))
def _rank_kernel(distmat, unit_rows, unit_cols, num_steps, rel_q, rel_g, *, use_int8_dot):
    """Counts for all kernel rows plus the order keys of the same-pid items, in one call.

    unit_rows int32 [T, U], unit_cols int32 [T, U, S] (T a power-of-two bucket; only the first num_steps
    steps are computed), rel_q / rel_g int32 [R] -> (int32 [T, U, S], int32 [R]).
    """
    out = jnp.zeros(unit_cols.shape, jnp.int32)

    def step(i, acc):
        a = _count_before(distmat, unit_rows[i], unit_cols[i], use_int8_dot)
        return jax.lax.dynamic_update_index_in_dim(acc, a, i, axis=0)

    counts = jax.lax.fori_loop(0, num_steps, step, out)
    return counts, _order_key(distmat[rel_q, rel_g])


@jax.jit
def _row_keys(distmat, rows):
    """Order keys of whole rows, int32 [len(rows), Ng] (the queries ranked by sorting)."""
    return _order_key(distmat[rows])


def _use_int8_dot(platform: str, num_gallery: int) -> bool:
    return platform == "cpu" and num_gallery < _F32_EXACT


def _as_device_matrix(distmat) -> jax.Array:
    if isinstance(distmat, jax.Array):
        return distmat if distmat.dtype == jnp.float32 else distmat.astype(jnp.float32)
    return jnp.asarray(np.asarray(distmat, dtype=np.float32))


def _pad_small(d: jax.Array) -> jax.Array:
    """Pads a small matrix with NaN to power-of-two shapes.

    A padded column sorts after every real column (NaN is last, ties go by index), so no count changes.
    """
    nq, ng = d.shape
    if nq * ng >= _PAD_BELOW:
        return d
    pq, pg = max(_next_pow2(nq), _MIN_SHAPE[0]), max(_next_pow2(ng), _MIN_SHAPE[1])
    if (pq, pg) == (nq, ng):
        return d
    return jnp.pad(d, ((0, pq - nq), (0, pg - ng)), constant_values=jnp.nan)


def _count_goods(distmat, rel: _Relevant, chunk_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(A_j for every good item in rel order, int64 [n_good]; order key of every rel item [R]): counted on the
    device, or for queries with more than _SORT_ABOVE good items read off one sort of their row."""
    S = _GOODS_PER_ROW
    good_q, good_g = rel.q[rel.good], rel.g[rel.good]
    sorted_q = rel.num_good > _SORT_ABOVE
    by_sort = sorted_q[good_q]
    counted = np.where(sorted_q, 0, rel.num_good)
    # Kernel rows: the counted good items of each query in rel order, up to S per row.
    cq, cg = good_q[~by_sort], good_g[~by_sort]
    pos = np.arange(len(cq)) - (np.cumsum(counted) - counted)[cq]  # index within its query
    rows_per_q = -(-counted // S)
    row_of_good = (np.cumsum(rows_per_q) - rows_per_q)[cq] + pos // S
    slot_of_good = pos % S
    n_rows = int(rows_per_q.sum())

    d = _as_device_matrix(distmat)
    platform = next(iter(d.devices())).platform
    d = _pad_small(d)
    if chunk_size is None:
        chunk_size = 256 if platform == "cpu" else 4096
    U = min(int(chunk_size), max(_next_pow2(n_rows), _MIN_ROWS))
    steps = -(-n_rows // U)
    T = _next_pow2(steps)
    rows = np.zeros(T * U, np.int32)
    rows[row_of_good] = cq
    # Padded slots repeat their row's first good item, padded rows use (0, 0); their counts are dropped.
    lead = slot_of_good == 0
    fill = np.zeros(T * U, np.int32)
    fill[row_of_good[lead]] = cg[lead]
    cols = np.repeat(fill[:, None], S, axis=1)
    cols[row_of_good, slot_of_good] = cg

    R = len(rel.q)
    rel_q = np.zeros(max(_next_pow2(R), _MIN_REL), np.int32)
    rel_g = np.zeros_like(rel_q)
    rel_q[:R], rel_g[:R] = rel.q, rel.g
    counts, keys = _rank_kernel(d, jnp.asarray(rows.reshape(T, U)), jnp.asarray(cols.reshape(T, U, S)),
                                jnp.int32(steps), jnp.asarray(rel_q), jnp.asarray(rel_g),
                                use_int8_dot=_use_int8_dot(platform, d.shape[1]))
    counts, keys = jax.device_get((counts, keys))
    a = np.empty(len(good_q), np.int64)
    a[~by_sort] = counts.reshape(T * U, S)[row_of_good, slot_of_good]
    if by_sort.any():
        a[by_sort] = _sorted_ranks(d, np.flatnonzero(sorted_q), good_q[by_sort], good_g[by_sort])
    return a, keys[:R]


def _sorted_ranks(d: jax.Array, queries: np.ndarray, good_q: np.ndarray, good_g: np.ndarray,
                  block: int = 256) -> np.ndarray:
    """A_j of the given good items (grouped by query, queries ascending) from one sort of each query's row.

    Each row's order keys become unique int64 composites (key, gallery index), so numpy's fast unstable sort
    gives exactly the stable order, and A_j is the position of the good item's composite in its sorted row.
    Rows go in blocks (bounded host memory), padded to a power of two (few compiled gathers).
    """
    ng = d.shape[1]
    shift = max(1, (ng - 1).bit_length())  # bits of the gallery index; + 32 key bits fit in int64
    index = np.arange(ng, dtype=np.int64)
    out = np.empty(len(good_q), np.int64)
    for start in range(0, len(queries), block):
        chunk = queries[start:start + block]
        padded = np.zeros(max(_next_pow2(len(chunk)), 1), np.int32)
        padded[:len(chunk)] = chunk
        keys = np.asarray(_row_keys(d, jnp.asarray(padded)))[:len(chunk)]
        composite = ((keys.astype(np.int64) + 2**31) << shift) | index
        ordered = np.sort(composite, axis=1)
        lo, hi = np.searchsorted(good_q, [chunk[0], chunk[-1] + 1])
        for r in range(len(chunk)):
            a, b = np.searchsorted(good_q[lo:hi], [chunk[r], chunk[r] + 1])
            sel = slice(lo + a, lo + b)
            out[sel] = np.searchsorted(ordered[r], composite[r, good_g[sel]])
    return out


def _rank_goods(rel: _Relevant, a: np.ndarray, keys: np.ndarray, nq: int):
    """Host part: per good item (grouped by query, in ranked order) its query, its 0-based rank after junk
    removal and its 1-based position i among the query's good items."""
    # Order each query's same-pid items by (distance, gallery index). rel is sorted by (query, gallery
    # index), so a stable sort on (query, key) does it, and every query's group keeps its positions.
    order = np.argsort((rel.q.astype(np.int64) << 32) | (keys.astype(np.int64) + 2**31), kind="stable")
    is_good = rel.good[order]
    is_junk = ~is_good
    per_q = np.bincount(rel.q, minlength=nq)
    group_start = (np.cumsum(per_q) - per_q)[rel.q[order]]
    junk_excl = np.cumsum(is_junk) - is_junk  # junk items strictly before, counted from the start
    good_excl = np.cumsum(is_good) - is_good
    junk_before = (junk_excl - junk_excl[group_start])[is_good]
    good_before = (good_excl - good_excl[group_start])[is_good]
    good_id = np.cumsum(rel.good) - 1  # index of each rel item among the good items (valid for goods)
    ranked = order[is_good]
    return rel.q[ranked], a[good_id[ranked]] - junk_before, good_before + 1


# ---------------------------------------------------------------------------------------------------------
# Public API


def evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids, *, max_rank: int = 50, q_clothes=None,
                     g_clothes=None, mode: str = "standard", chunk_size: int | None = None) -> RankingResult:
    """CMC and mAP of a distance matrix under the re-ID protocol (see the module docstring).

    distmat: [Nq, Ng] distances (smaller = more similar), np.ndarray or jax.Array; compared as float32.
    q_pids/q_camids: [Nq]; g_pids/g_camids: [Ng]; any dtype comparable with ==, pids also sortable.
    q_clothes/g_clothes: [Nq]/[Ng] clothes ids, required for 'same_clothes' and 'clothes_changing'.
    max_rank: CMC length.
    chunk_size: kernel rows per device step (a row holds up to 4 good matches of one query); on CPU a step
      materialises about chunk_size * 4 * Ng bytes. Default 256 on CPU, 4096 on accelerators.
    """
    nq, _, labels = _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, q_clothes,
                                  g_clothes, mode, chunk_size)
    rel = _relevant_items(*labels, mode)
    valid = rel.num_good > 0
    num_valid = int(valid.sum())
    ap = np.full(nq, np.nan)
    first = np.full(nq, -1, np.int64)
    if num_valid == 0:
        logging.warning("ranking (%s): none of the %d queries has a good match; CMC and mAP are set to 0",
                        mode, nq)
        return RankingResult(cmc=np.zeros(max_rank), mAP=0.0, num_valid_queries=0, num_skipped_queries=nq,
                             average_precision=ap, first_match_rank=first, num_good=rel.num_good, mode=mode)

    a, keys = _count_goods(distmat, rel, chunk_size)
    q_of, rank, i = _rank_goods(rel, a, keys, nq)
    ap[valid] = np.bincount(q_of, weights=i / (rank + 1.0), minlength=nq)[valid] / rel.num_good[valid]
    is_first = i == 1
    first[q_of[is_first]] = rank[is_first]
    hits = np.bincount(np.minimum(first[valid], max_rank), minlength=max_rank + 1)[:max_rank]
    return RankingResult(cmc=np.cumsum(hits) / num_valid, mAP=float(np.mean(ap[valid])),
                         num_valid_queries=num_valid, num_skipped_queries=nq - num_valid, average_precision=ap,
                         first_match_rank=first, num_good=rel.num_good, mode=mode)


def cmc_map(distmat, q_pids, g_pids, q_camids, g_camids, *, max_rank: int = 50, q_clothes=None,
            g_clothes=None, mode: str = "standard", chunk_size: int | None = None) -> tuple[np.ndarray, float]:
    """(cmc float64 [max_rank], mAP float): `evaluate_ranking` without the bookkeeping."""
    res = evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank,
                           q_clothes=q_clothes, g_clothes=g_clothes, mode=mode, chunk_size=chunk_size)
    return res.cmc, res.mAP


__all__ = ["METRICS", "MODES", "RankingResult", "cmc_map", "evaluate_ranking", "pairwise_distance"]
