"""k-reciprocal encoding and Jaccard distances (Zhong et al., CVPR'17), on device.

Shared by re-ranking at evaluation (evaluation/rerank.py, whose docstring walks through steps 1–5) and
by the `plus` variant's DBSCAN, which clusters the whole target training set on the Jaccard distances
(`jaccard_graph`). N items.

Two paths over one arithmetic:

* sparse, O(N·k) memory (what runs): `neighbours` finds each item's nearest items from blocks of rows of
  D against all columns (never an [N, N] array); `encoding` keeps V as padded per-row lists (`Encoding`:
  ascending columns and values); `overlapping_pairs` lists the pairs whose rows of V share a column (the
  others have m = 0, Jaccard distance 1); `pair_jaccard` computes theirs.
* dense (`dense_encoding`, `dense_jaccard`, `jaccard_distances`): [N, N] arrays, the reference the sparse
  path is tested against (small N only).

Both compute every float the same way, so on the same distances they agree bit for bit (the test suite
checks equality, not closeness):

* D[i, j] = dist[j, i]² / max_k dist[k, i]² (the NumPy code's column normalisation and transpose): row i
  of D reads column i of the distance matrix; features give 1 − cos by `_cosine_rows`.
* Neighbour lists: `lax.top_k` on −D, ties to the lower index.
* Weights exp(−D) by `exp_neg`, a polynomial of IEEE operations: XLA:CPU's own exp gives different bits
  for one input at different array sizes.
* The normalising sum Σ_x w[i, x] and m[i, g] = Σ_k min(V[i, k], V[g, k]) add one term at a time in
  increasing column order (the NumPy code's order; a tree reduction's grouping would depend on where a
  dense row's zeros lie). This makes m exactly symmetric.
* Local query expansion: the k2 neighbours' rows added in neighbour order, then divided by k2.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse

from svreid_jax import clustering

_CHUNK_ELEMENTS = 1 << 25  # dense path: bound on chunk * K * Ng in the Jaccard step (128 MiB of float32)
_BLOCK_ELEMENTS = 1 << 24  # sparse path: rows per block × N in the neighbour pass (64 MiB of float32)
_KEEP = 64  # sparse path: nearest items kept per row; weights outside them re-read their row of D
_PAIR_CHUNK = 1 << 14  # sparse path: pairs per Jaccard call
_PAIR_ROWS = 4096  # sparse path: rows per sparse product when listing overlapping pairs


def _sizes(n: int, k1: int, k2: int) -> tuple[int, int, int]:
    """(forward list length, half list length, top-k length) for n items, clipped as NumPy slices are."""
    k_forward = min(k1 + 1, n)
    k_half = min(int(np.around(k1 / 2.0)) + 1, n)
    return k_forward, k_half, min(max(k1 + 1, k2), n)


def exp_neg(d: jax.Array) -> jax.Array:
    """exp(−d) for float32 d in [0, 1] from + and × alone (relative error < 5e-7): the same bits for a value
    at any array shape or position, which XLA:CPU's exp does not give."""
    t = d * -0.25
    p = jnp.full_like(t, 1.0 / 362880.0)
    for factorial in (40320.0, 5040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0):
        p = p * t + 1.0 / factorial
    p = p * p
    return p * p


def _sequential_sum(x: jax.Array) -> jax.Array:
    """[R, K] → [R]: x[:, 0] + x[:, 1] + … added left to right (a fixed order; see the module docstring)."""
    return jax.lax.scan(lambda acc, col: (acc + col, None), jnp.zeros(x.shape[:1], x.dtype), x.T)[0]


# ---------------------------------------------------------------------------------------------- dense path

@functools.partial(jax.jit, static_argnames=("k_top",))
def _neighbours(dist: jax.Array, *, k_top: int) -> tuple[jax.Array, jax.Array]:
    """Step 1 and the neighbour lists → (normalised D [N, N], the k_top nearest of each item [N, k_top])."""
    d = jnp.square(dist.astype(jnp.float32))
    d = (d / jnp.max(d, axis=0, keepdims=True)).T
    return d, jax.lax.top_k(-d, k_top)[1]


def dense_encoding(dist: jax.Array, *, k1: int, k2: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Steps 1–4 on the full [N, N] distance matrix → (normalised D [N, N], V [N, N], non-zeros per row).

    Two executables: compiled together with what consumes the neighbour lists, XLA:CPU makes the top-k
    an order of magnitude slower.
    """
    n = dist.shape[0]
    d, rank = _neighbours(dist, k_top=_sizes(n, k1, k2)[2])
    return _dense_expansion(d, rank, k1=k1, k2=k2)


@functools.partial(jax.jit, static_argnames=("k1", "k2"))
def _dense_expansion(d: jax.Array, rank: jax.Array, *, k1: int, k2: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Steps 2–4 from D and the neighbour lists."""
    n = d.shape[0]
    k_forward, k_half, _ = _sizes(n, k1, k2)
    self_index = jnp.arange(n)[:, None, None]

    forward = rank[:, :k_forward]  # [N, F]
    reciprocal = jnp.any(rank[forward][:, :, :k_forward] == self_index, axis=2)  # [N, F] is i in R(j)?
    half = rank[:, :k_half]  # [N, H]
    half_reciprocal = jnp.any(rank[half][:, :, :k_half] == self_index, axis=2)  # [N, H]

    # For each forward slot s of i (candidate c = forward[i, s]): c's half-size reciprocal set, and how much
    # of it lies in i's reciprocal set. Sets hold distinct indices, so counting matches counts the overlap.
    cand = half[forward]  # [N, F, H]
    cand_ok = half_reciprocal[forward]  # [N, F, H]
    in_set = jnp.any((cand[..., None] == forward[:, None, None, :]) & reciprocal[:, None, None, :], axis=-1)
    overlap = jnp.sum(in_set & cand_ok, axis=-1)  # [N, F]
    size = jnp.sum(cand_ok, axis=-1)
    accept = reciprocal & (3 * overlap > 2 * size)  # |∩| > 2/3 |set|, in integers

    cols = jnp.concatenate([jnp.where(reciprocal, forward, n).reshape(n, -1),
                            jnp.where(accept[..., None] & cand_ok, cand, n).reshape(n, -1)], axis=1)
    rows = jnp.broadcast_to(jnp.arange(n)[:, None], cols.shape)
    member = jnp.zeros((n, n), bool).at[rows, cols].set(True, mode="drop")  # index n = no entry
    weight = jnp.where(member, exp_neg(d), 0.0)
    v = weight / _sequential_sum(weight)[:, None]

    if k2 != 1:
        v = jax.lax.optimization_barrier(v)  # else each gathered row recomputes its weights (3× slower on CPU)
        k_qe = min(k2, n)
        acc = v[rank[:, 0]]
        for t in range(1, k_qe):
            acc = acc + v[rank[:, t]]
        v = acc / k_qe
    return d, v, jnp.sum(v != 0, axis=1)


@functools.partial(jax.jit, static_argnames=("num_query", "gallery_start", "k", "chunk", "lambda_value"))
def _dense_jaccard(d: jax.Array, v: jax.Array, *, num_query: int, gallery_start: int, k: int, chunk: int,
                   lambda_value: float) -> jax.Array:
    """Step 5 → [Nq, Ng], the queries rows 0..num_query−1 and the gallery rows gallery_start..N−1."""
    vals, idx = jax.lax.top_k(v[:num_query], k)  # the (at most k) non-zeros of each query row, and zeros
    order = jnp.argsort(idx, axis=1)  # increasing column: the order m is added in
    vals, idx = jnp.take_along_axis(vals, order, axis=1), jnp.take_along_axis(idx, order, axis=1)
    v_gallery_t = v[gallery_start:].T  # [N, Ng]: column k of V over the gallery rows

    def one_query(args):
        values, index = args  # [k], [k]
        return _sequential_sum(jnp.minimum(values[:, None], v_gallery_t[index]).T)  # [Ng]

    m = jax.lax.map(one_query, (vals, idx), batch_size=chunk)
    jaccard = 1.0 - m / (2.0 - m)
    return jaccard * (1.0 - lambda_value) + d[:num_query, gallery_start:] * lambda_value


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def dense_jaccard(d: jax.Array, v: jax.Array, nonzeros: jax.Array, *, num_query: int, gallery_start: int,
                  lambda_value: float) -> jax.Array:
    """Step 5 from `dense_encoding`'s output → (1 − λ) J + λ D, [num_query, N − gallery_start].

    Queries are rows 0..num_query−1, the gallery rows gallery_start..N−1 (re-ranking: gallery_start =
    num_query; all pairs: num_query = N, gallery_start = 0).
    """
    n = d.shape[0]
    k = max(min(_next_pow2(int(jax.device_get(jnp.max(nonzeros[:num_query])))), n), 1)
    chunk = max(1, min(num_query, _CHUNK_ELEMENTS // max(1, k * (n - gallery_start))))
    return _dense_jaccard(d, v, num_query=num_query, gallery_start=gallery_start, k=k, chunk=chunk,
                          lambda_value=float(lambda_value))


def _check_square(dist, what: str) -> jax.Array:
    dist = jnp.asarray(dist, jnp.float32)
    n = dist.shape[0]
    if dist.ndim != 2 or dist.shape[1] != n or n < 2:
        raise ValueError(f"{what} needs a square [N, N] matrix with N ≥ 2, got shape {dist.shape}")
    return dist


def jaccard_distances(dist, *, k1: int, k2: int) -> jax.Array:
    """All-pairs k-reciprocal Jaccard distances [N, N] in [0, 1] from non-negative distances [N, N]
    (no original-distance term: λ = 0, as Cluster-Contrast/SpCL cluster on). Dense: the reference."""
    dist = _check_square(dist, "jaccard_distances")
    d, v, nonzeros = dense_encoding(dist, k1=int(k1), k2=int(k2))
    return dense_jaccard(d, v, nonzeros, num_query=dist.shape[0], gallery_start=0, lambda_value=0.0)


# --------------------------------------------------------------------------------------------- sparse path

RowsOfD = Callable[[np.ndarray], jax.Array]  # int32 [B] item indices → their rows of normalised D [B, N]


@jax.jit
def _cosine_rows(features: jax.Array, rows: jax.Array) -> jax.Array:
    """features [N, Dim] (L2-normalised), rows int32 [B] → 1 − cos [B, N], clamped at 0 (full float32
    products on every backend, as the host's NumPy matmul gave)."""
    products = jnp.matmul(features[rows], features.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(1.0 - products, 0.0)


@jax.jit
def _matrix_rows(dist: jax.Array, rows: jax.Array) -> jax.Array:
    """Columns `rows` of dist [N, N], transposed → [B, N] (row i of D reads column i of the matrix)."""
    return dist[:, rows].T


@jax.jit
def _normalised(raw: jax.Array) -> jax.Array:
    """Step 1 on rows [B, N] of raw distances: squared, each row divided by its maximum."""
    d = jnp.square(raw)
    return d / jnp.max(d, axis=1, keepdims=True)


def cosine_rows_of_d(features) -> tuple[RowsOfD, int]:
    """(rows of D, N) for L2-normalised features [N, Dim]: D from 1 − cos, computed a block at a time."""
    f = jnp.asarray(features, jnp.float32)
    return (lambda rows: _normalised(_cosine_rows(f, jnp.asarray(rows)))), f.shape[0]


def matrix_rows_of_d(dist) -> tuple[RowsOfD, int]:
    """(rows of D, N) for a non-negative distance matrix [N, N] (dense input, as re-ranking gets it)."""
    dist = _check_square(dist, "the k-reciprocal encoding")
    return (lambda rows: _normalised(_matrix_rows(dist, jnp.asarray(rows)))), dist.shape[0]


def cosine_distances(features, *, block: int | None = None) -> jax.Array:
    """The [N, N] matrix whose dense encoding is what `cosine_rows_of_d` gives block by block: column i
    holds item i's 1 − cos as `_cosine_rows` computes them (for tests and small N)."""
    f = jnp.asarray(features, jnp.float32)
    n = f.shape[0]
    block = _block_rows(n, block)
    parts = [_cosine_rows(f, jnp.asarray(rows))[:count] for rows, count in _row_blocks(n, block)]
    return jnp.concatenate(parts, axis=0).T


def _block_rows(n: int, block: int | None) -> int:
    return max(1, min(n, block or max(8, _BLOCK_ELEMENTS // n)))


def _row_blocks(n: int, block: int):
    """Yield (int32 [block] item indices, how many are real) covering 0..n−1; the last block repeats item
    n−1 so every block has one shape (one executable)."""
    for start in range(0, n, block):
        yield np.minimum(np.arange(start, start + block), n - 1).astype(np.int32), min(block, n - start)


@functools.partial(jax.jit, static_argnames=("keep",))
def _nearest(d: jax.Array, *, keep: int) -> tuple[jax.Array, jax.Array]:
    """Rows of D [B, N] → (their `keep` smallest values [B, keep] ascending, ties by index; their columns)."""
    neg, idx = jax.lax.top_k(-d, keep)
    return -neg, idx


def neighbours(rows_of_d: RowsOfD, n: int, *, keep: int, block: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Each item's `keep` nearest items: (D values float32 [N, keep] ascending, columns int32 [N, keep]),
    ties by the lower index as the dense path's top-k. One [block, N] block of D at a time."""
    block = _block_rows(n, block)
    values, columns = [], []
    for rows, count in _row_blocks(n, block):
        vals, idx = _nearest(rows_of_d(rows), keep=keep)
        values.append(vals[:count])
        columns.append(idx[:count])
    return jnp.concatenate(values), jnp.concatenate(columns)


@functools.partial(jax.jit, static_argnames=("k_forward", "k_half"))
def _expanded_sets(rank: jax.Array, rows: jax.Array, *, k_forward: int, k_half: int) -> tuple[jax.Array, jax.Array]:
    """Steps 2–3's sets for items `rows` [B] from the neighbour lists rank [N, ≥k_forward] → (their members'
    columns int32 [B, F + F·H] ascending, padded with N; member counts [B]). The dense path's sets."""
    n = rank.shape[0]
    rank_f, rank_h = rank[:, :k_forward], rank[:, :k_half]
    forward = rank_f[rows]  # [B, F]
    reciprocal = jnp.any(rank_f[forward] == rows[:, None, None], axis=2)  # [B, F]: is i in R(c)?
    cand = rank_h[forward]  # [B, F, H]: c's half list
    cand_ok = jnp.any(rank_h[cand] == forward[:, :, None, None], axis=3)  # is c in the half list of each?
    in_set = jnp.any((cand[..., None] == forward[:, None, None, :]) & reciprocal[:, None, None, :], axis=-1)
    overlap = jnp.sum(in_set & cand_ok, axis=-1)  # [B, F]
    size = jnp.sum(cand_ok, axis=-1)
    accept = reciprocal & (3 * overlap > 2 * size)
    cols = jnp.concatenate([jnp.where(reciprocal, forward, n),
                            jnp.where(accept[..., None] & cand_ok, cand, n).reshape(rows.shape[0], -1)], axis=1)
    return _unique_sorted(cols, n)


def _unique_sorted(cols: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Rows of column indices [B, K] (N = none) → each row's distinct columns ascending, padded with N; counts."""
    cols = jnp.sort(cols, axis=1)
    repeat = jnp.concatenate([jnp.zeros_like(cols[:, :1], bool), cols[:, 1:] == cols[:, :-1]], axis=1)
    cols = jnp.sort(jnp.where(repeat, n, cols), axis=1)
    return cols, jnp.sum(cols < n, axis=1)


@jax.jit
def _d_from_nearest(cols: jax.Array, near_d: jax.Array, near_idx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """D at member columns [B, W] read from the kept nearest items → (values [B, W], found [B, W])."""
    match = cols[:, :, None] == near_idx[:, None, :]
    pos = jnp.argmax(match, axis=2)
    return jnp.take_along_axis(near_d, pos, axis=1), jnp.any(match, axis=2)


@jax.jit
def _d_from_rows(d: jax.Array, cols: jax.Array) -> jax.Array:
    """Rows of D [B, N], member columns [B, W] (N = none) → D there [B, W] (0 at padding)."""
    n = d.shape[1]
    return jnp.where(cols < n, jnp.take_along_axis(d, jnp.minimum(cols, n - 1), axis=1), 0.0)


@jax.jit
def _row_weights(d: jax.Array, valid: jax.Array) -> jax.Array:
    """Step 3 on member lists: exp(−D) normalised to sum 1 per row [B, W] (0 at padding)."""
    w = jnp.where(valid, exp_neg(d), 0.0)
    return w / _sequential_sum(w)[:, None]


@functools.partial(jax.jit, static_argnames=("k_qe",))
def _query_expansion(cols: jax.Array, vals: jax.Array, rank: jax.Array, rows: jax.Array, *,
                     k_qe: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Step 4 for items `rows` [B]: the mean of V over their k_qe nearest items' rows → (columns [B, k_qe·W]
    ascending, padded with N; values; counts)."""
    n = cols.shape[0]
    nb = rank[rows, :k_qe]  # [B, T]
    nb_cols, nb_vals = cols[nb], vals[nb]  # [B, T, W]
    union, counts = _unique_sorted(nb_cols.reshape(rows.shape[0], -1), n)

    def lookup(row_cols, row_vals, wanted):  # one row's value at each wanted column (0 if absent)
        pos = jnp.minimum(jnp.searchsorted(row_cols, wanted), row_cols.shape[0] - 1)
        return jnp.where(row_cols[pos] == wanted, row_vals[pos], 0.0)

    acc = jax.vmap(lookup)(nb_cols[:, 0], nb_vals[:, 0], union)
    for t in range(1, k_qe):
        acc = acc + jax.vmap(lookup)(nb_cols[:, t], nb_vals[:, t], union)
    return union, jnp.where(union < n, acc / k_qe, 0.0), counts


class Encoding(NamedTuple):
    """V of steps 3–4 as padded per-row lists: cols int32 [N, W] ascending (N = padding), vals float32
    [N, W] (0 at padding); W = the largest row's size. Every listed value is > 0."""
    cols: jax.Array
    vals: jax.Array


def _compact(parts_cols, parts_vals, parts_counts) -> Encoding:
    """Blocks of padded rows → one Encoding with W = the largest count."""
    width = max(1, max(int(jax.device_get(jnp.max(c))) for c in parts_counts))
    return Encoding(jnp.concatenate([c[:, :width] for c in parts_cols]),
                    jnp.concatenate([v[:, :width] for v in parts_vals]))


def encoding(rows_of_d: RowsOfD, n: int, *, k1: int, k2: int, block: int | None = None,
             keep: int | None = None) -> Encoding:
    """Steps 1–4 without an [N, N] array: V as sparse rows, equal to the dense path's non-zeros bit for bit.

    rows_of_d: `cosine_rows_of_d` or `matrix_rows_of_d`. keep: nearest items kept per row (default 64, at
    least the top-k length); a row whose members reach beyond them is read again from rows_of_d.
    """
    k1, k2 = int(k1), int(k2)
    if n < 2 or k1 < 1 or k2 < 1:
        raise ValueError(f"the k-reciprocal encoding needs N ≥ 2 items and k1, k2 ≥ 1, got N={n}, k1={k1}, k2={k2}")
    k_forward, k_half, k_top = _sizes(n, k1, k2)
    keep = min(n, max(k_top, keep or _KEEP))
    block = _block_rows(n, block)
    near_d, near_idx = neighbours(rows_of_d, n, keep=keep, block=block)
    rank = near_idx[:, :k_top]

    cols, vals, counts = [], [], []
    for rows, count in _row_blocks(n, block):
        c, k = _expanded_sets(rank, jnp.asarray(rows), k_forward=k_forward, k_half=k_half)
        cols.append(c[:count])
        counts.append(k[:count])
    width = max(1, max(int(jax.device_get(jnp.max(k))) for k in counts))
    cols = jnp.concatenate([c[:, :width] for c in cols])  # [N, W]
    d, found = _d_from_nearest(cols, near_d, near_idx)
    valid = cols < n
    missing = np.flatnonzero(np.asarray(jnp.any(valid & ~found, axis=1)))
    for start in range(0, missing.size, block):  # members beyond the kept nearest: their rows of D again
        rows = missing[np.minimum(np.arange(start, start + block), missing.size - 1)].astype(np.int32)
        count = min(block, missing.size - start)
        got = _d_from_rows(rows_of_d(rows), cols[rows])
        d = d.at[rows[:count]].set(got[:count])
    vals = _row_weights(d, valid)
    if k2 == 1:
        return Encoding(cols, vals)

    parts = ([], [], [])
    for rows, count in _row_blocks(n, block):
        for part, x in zip(parts, _query_expansion(cols, vals, rank, jnp.asarray(rows), k_qe=min(k2, n))):
            part.append(x[:count])
    return _compact(*parts)


def overlapping_pairs(enc: Encoding, *, queries: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pairs whose rows of V share a column (every other pair has m = 0, Jaccard distance 1) →
    (first, second) int64 [P] each: all pairs first < second, or with `queries` = Nq the pairs
    first < Nq ≤ second (re-ranking's query × gallery). Sorted by first, then second."""
    cols = np.asarray(enc.cols)
    n = cols.shape[0]
    valid = cols < n
    rows = scipy.sparse.csr_matrix((np.ones(int(valid.sum()), np.int32), cols[valid],
                                    np.concatenate([[0], np.cumsum(valid.sum(axis=1))])), shape=(n, n))
    stop = n if queries is None else int(queries)
    firsts, seconds = [], []
    for start in range(0, stop, _PAIR_ROWS):
        end = min(start + _PAIR_ROWS, stop)
        block = (rows[start:end] @ rows.T).tocoo()
        first, second = block.row.astype(np.int64) + start, block.col.astype(np.int64)
        keep = second > first if queries is None else second >= stop
        order = np.lexsort((second[keep], first[keep]))
        firsts.append(first[keep][order])
        seconds.append(second[keep][order])
    return np.concatenate(firsts), np.concatenate(seconds)


@jax.jit
def _pair_jaccard(cols: jax.Array, vals: jax.Array, first: jax.Array, second: jax.Array) -> jax.Array:
    """Step 5 for pairs [P]: 1 − m / (2 − m), m added over second's columns in increasing order."""
    n = cols.shape[0]
    a_cols, a_vals, b_cols, b_vals = cols[first], vals[first], cols[second], vals[second]
    pos = jnp.minimum(jax.vmap(jnp.searchsorted)(a_cols, b_cols), cols.shape[1] - 1)
    hit = (jnp.take_along_axis(a_cols, pos, axis=1) == b_cols) & (b_cols < n)
    m = _sequential_sum(jnp.where(hit, jnp.minimum(jnp.take_along_axis(a_vals, pos, axis=1), b_vals), 0.0))
    return 1.0 - m / (2.0 - m)


def pair_jaccard(enc: Encoding, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Jaccard distances float32 [P] of the pairs (first[p], second[p]), equal to the dense path's."""
    out = np.empty(len(first), np.float32)
    for start in range(0, len(first), _PAIR_CHUNK):
        take = np.minimum(np.arange(start, start + _PAIR_CHUNK), len(first) - 1)  # one shape per call
        got = _pair_jaccard(enc.cols, enc.vals, jnp.asarray(first[take], jnp.int32),
                            jnp.asarray(second[take], jnp.int32))
        out[start:start + _PAIR_CHUNK] = np.asarray(got)[:len(first) - start]
    return out


def jaccard_graph(features, *, k1: int, k2: int, radius: float, block: int | None = None,
                  keep: int | None = None) -> clustering.RadiusGraph:
    """The pairs of items within Jaccard distance `radius` (< 1) of each other, from L2-normalised features
    [N, Dim] under D = 1 − cos (λ = 0, as Cluster-Contrast/SpCL cluster on): what `clustering.dbscan`
    reads in place of `jaccard_distances(cosine_distances(features))`, in O(N·k) memory."""
    if not 0.0 <= radius < 1.0:
        raise ValueError(f"jaccard_graph: radius={radius} must lie in [0, 1) (every pair is within 1)")
    rows_of_d, n = cosine_rows_of_d(features)
    enc = encoding(rows_of_d, n, k1=k1, k2=k2, block=block, keep=keep)
    first, second = overlapping_pairs(enc)
    distance = pair_jaccard(enc, first, second)
    near = distance <= radius
    return clustering.RadiusGraph(n, first[near], second[near], distance[near], float(radius))
