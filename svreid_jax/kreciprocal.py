"""k-reciprocal encoding and Jaccard distances (Zhong et al., CVPR'17), on device.

Shared by re-ranking at evaluation (evaluation/rerank.py, whose docstring walks through steps 1–5) and
by the `plus` variant's DBSCAN, which clusters the whole target training set on the Jaccard distances
(`jaccard_graph`). N items.

Two paths over one arithmetic:

* sparse, O(N·k) memory (what runs): `neighbours` finds each item's nearest items from blocks of rows of
  D against all columns (never an [N, N] array); `encoding` keeps V as padded per-row lists (`Encoding`:
  ascending columns and values); `candidate_pairs` lists the pairs whose rows of V may overlap by enough (the
  others are farther than the radius asked for); `pair_jaccard` computes theirs.
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
_TILE = 512  # sparse path, features: items per side of a tile of D (one [T, Dim] × [Dim, T] matmul)
_BLOCK_ELEMENTS = 1 << 24  # sparse path, a matrix: rows per block × N (64 MiB of float32)
_KEEP = 64  # sparse path: nearest items kept per row; weights beyond them are read again from D
_BUFFER_ELEMENTS = 1 << 23  # sparse path: rows × N of V held dense while their pairs' m are added (32 MiB)
_PAIR_CHUNK = 1 << 14  # sparse path: pairs per Jaccard call
_PAIR_ROWS = 1024  # sparse path: rows per sparse product when listing candidate pairs (~4 M products)
_MARGIN = 1e-4  # candidate pairs: slack on m's bound (float64 sums there, float32 m later)


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


def _per_row(x: jax.Array, total: jax.Array) -> jax.Array:
    """x [R, K] divided by total [R] per row, written as x · (1 / total): XLA rewrites a division by a
    broadcast into that product, a division by gathered values it does not, so both paths spell it out."""
    return x * (1.0 / total)[:, None]


def _sequential_sum(x: jax.Array) -> jax.Array:
    """[R, K] → [R]: x[:, 0] + x[:, 1] + … added left to right (a fixed order; see the module docstring)."""
    return jax.lax.scan(lambda acc, col: (acc + col, None), jnp.zeros(x.shape[:1], x.dtype), x.T)[0]


# ---------------------------------------------------------------------------------------------- dense path

@functools.partial(jax.jit, static_argnames=("k_top",))
def _neighbours(dist: jax.Array, *, k_top: int) -> tuple[jax.Array, jax.Array]:
    """Step 1 and the neighbour lists → (normalised D [N, N], the k_top nearest of each item [N, k_top])."""
    d = jnp.square(dist.astype(jnp.float32)).T
    d = _per_row(d, jnp.max(d, axis=1))
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
    v = _per_row(weight, _sequential_sum(weight))

    if k2 != 1:
        v = jax.lax.optimization_barrier(v)  # else each gathered row recomputes its weights (3× slower on CPU)
        k_qe = min(k2, n)
        acc = v[rank[:, 0]]
        for t in range(1, k_qe):
            acc = acc + v[rank[:, t]]
        v = acc * (1.0 / k_qe)
    return d, v, jnp.sum(v != 0, axis=1)


@functools.partial(jax.jit, static_argnames=("num_query", "gallery_start", "k", "chunk"))
def _dense_jaccard(v: jax.Array, *, num_query: int, gallery_start: int, k: int, chunk: int) -> jax.Array:
    """Step 5's J → [Nq, Ng], the queries rows 0..num_query−1 and the gallery rows gallery_start..N−1."""
    vals, idx = jax.lax.top_k(v[:num_query], k)  # the (at most k) non-zeros of each query row, and zeros
    order = jnp.argsort(idx, axis=1)  # increasing column: the order m is added in
    vals, idx = jnp.take_along_axis(vals, order, axis=1), jnp.take_along_axis(idx, order, axis=1)
    v_gallery_t = v[gallery_start:].T  # [N, Ng]: column k of V over the gallery rows

    def one_query(args):
        values, index = args  # [k], [k]
        return _sequential_sum(jnp.minimum(values[:, None], v_gallery_t[index]).T)  # [Ng]

    m = jax.lax.map(one_query, (vals, idx), batch_size=chunk)
    return 1.0 - m / (2.0 - m)


@functools.partial(jax.jit, static_argnames=("lambda_value",))
def combine(jaccard: jax.Array, d: jax.Array, *, lambda_value: float) -> jax.Array:
    """(1 − λ) J + λ D, elementwise (one executable for both paths, so both round alike)."""
    return jaccard * (1.0 - lambda_value) + d * lambda_value


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
    jaccard = _dense_jaccard(v, num_query=num_query, gallery_start=gallery_start, k=k, chunk=chunk)
    return combine(jaccard, d[:num_query, gallery_start:], lambda_value=float(lambda_value))


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
#
# D comes from a `_Source`: features (D from 1 − cos, computed in tiles) or a dense matrix (re-ranking's
# input). A source gives each item's `keep` nearest (values of D ascending, ties by the lower index, as
# the dense top-k) and D at any listed pairs, bit for bit as the dense path reads them.


class _Nearest(NamedTuple):
    d: jax.Array  # float32 [N, keep]: D ascending (ties: the lower column first)
    idx: jax.Array  # int32 [N, keep]: their columns


@jax.jit
def _cosine_tile(features: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """features [N, Dim] (L2-normalised), item indices rows, cols int32 [T] (≥ N: padding) → 1 − cos [T, T]
    clamped at 0, from full float32 products on every backend (as the host's NumPy matmul gave).

    Every entry of the cosine distances the sparse path reads comes from this executable, with the
    lower item index on the rows side (`_tile_of`), so a value read twice is the same value.
    """
    n = features.shape[0]
    a, b = features[jnp.minimum(rows, n - 1)], features[jnp.minimum(cols, n - 1)]
    return jnp.maximum(1.0 - jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST), 0.0)


@functools.partial(jax.jit, static_argnames=("n", "transpose", "diagonal"), donate_argnums=(0,))
def _merge_tile(state, tile: jax.Array, cols: jax.Array, *, n: int, transpose: bool, diagonal: bool):
    """Running nearest of T rows: state (raw distances ascending [T, L], their columns [T, L], row maxima
    [T]) and a tile of new columns `cols` [T], all above the state's (so index order is kept on ties)."""
    vals, idx, top = state
    if diagonal:  # entry (a, b) with a > b is (b, a): the lower index on the rows side
        tile = jnp.where(jnp.arange(tile.shape[0])[:, None] <= jnp.arange(tile.shape[1])[None, :], tile, tile.T)
    elif transpose:
        tile = tile.T
    valid = (cols < n)[None, :]
    top = jnp.maximum(top, jnp.max(jnp.where(valid, tile, 0.0), axis=1))
    both = jnp.concatenate([vals, jnp.where(valid, tile, jnp.inf)], axis=1)
    neg, pos = jax.lax.top_k(-both, vals.shape[1])
    columns = jnp.concatenate([idx, jnp.broadcast_to(cols, tile.shape)], axis=1)
    return -neg, jnp.take_along_axis(columns, pos, axis=1), top


@functools.partial(jax.jit, static_argnames=("k_top",))
def _finish_nearest(vals: jax.Array, idx: jax.Array, top: jax.Array, *, k_top: int):
    """Raw nearest [N, L] and row maxima → (D ascending with ties by index [N, L], columns, row maxima of
    D [N], whether the first k_top are certain [N]: D's order can tie values the raw order kept apart)."""
    m = jnp.square(top)
    d, idx = jax.lax.sort((_per_row(jnp.square(vals), m), idx), dimension=1, num_keys=2)
    if vals.shape[1] >= vals.shape[0]:  # every item kept
        return d, idx, m, jnp.ones(vals.shape[:1], bool)
    # Items not kept have raw distance ≥ the last kept one's, so D ≥ its D: a strictly larger last D
    # than the k_top-th means nothing outside could tie into the first k_top.
    return d, idx, m, d[:, -1] > d[:, k_top - 1]


@jax.jit
def _tile_entries(tile: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    return tile[a, b]


@jax.jit
def _normalise_entries(raw: jax.Array, m: jax.Array, first: jax.Array) -> jax.Array:
    return jnp.square(raw) * (1.0 / m)[first]


class _FeatureSource:
    """D from 1 − cos of L2-normalised features [N, Dim], a [T, T] tile at a time (T = `tile`)."""

    def __init__(self, features, tile: int | None = None):
        self.features = jnp.asarray(features, jnp.float32)
        self.n = int(self.features.shape[0])
        self.tile = max(1, min(self.n, tile or _TILE))
        self.blocks = -(-self.n // self.tile)
        self.index = [jnp.arange(b * self.tile, (b + 1) * self.tile, dtype=jnp.int32) for b in range(self.blocks)]
        self.row_max = None  # max_j D_raw[i, j]², set by `nearest`

    def tile_of(self, i: int, j: int) -> jax.Array:
        """Raw distances of block i's items (rows) to block j's (columns), i ≤ j."""
        return _cosine_tile(self.features, self.index[i], self.index[j])

    def nearest(self, keep: int, k_top: int) -> _Nearest:
        n, t = self.n, self.tile
        states = [(jnp.full((t, keep), jnp.inf, jnp.float32), jnp.full((t, keep), n, jnp.int32),
                   jnp.zeros((t,), jnp.float32)) for _ in range(self.blocks)]
        # Each block of rows meets its column blocks in increasing order (earlier i: transposed tiles).
        for i in range(self.blocks):
            for j in range(i, self.blocks):
                tile = self.tile_of(i, j)
                states[i] = _merge_tile(states[i], tile, self.index[j], n=n, transpose=False, diagonal=i == j)
                if j != i:
                    states[j] = _merge_tile(states[j], tile, self.index[i], n=n, transpose=True, diagonal=False)
        vals, idx, top = (jnp.concatenate([s[k] for s in states])[:n] for k in range(3))
        d, idx, self.row_max, certain = _finish_nearest(vals, idx, top, k_top=k_top)
        unsure = np.flatnonzero(~np.asarray(certain))
        if unsure.size:  # ties across the kept boundary: these rows' order from their whole row of D
            d, idx = np.array(d), np.array(idx)
            step = max(1, _BLOCK_ELEMENTS // n)
            for part in np.split(unsure, np.arange(step, unsure.size, step)):
                full = np.asarray(self.d_at(np.repeat(part, n), np.tile(np.arange(n), part.size))).reshape(-1, n)
                order = np.argsort(full, axis=1, kind="stable")[:, :keep]  # ties: the lower index
                d[part], idx[part] = np.take_along_axis(full, order, axis=1), order
            d, idx = jnp.asarray(d), jnp.asarray(idx, jnp.int32)
        return _Nearest(d, idx)

    def d_at(self, first: np.ndarray, second: np.ndarray) -> jax.Array:
        """D[first[p], second[p]] float32 [P] (after `nearest`).

        The entries come from `_cosine_tile` on gathered tiles: the rows a block of up to T distinct lower
        indices, the columns up to T distinct higher indices that those rows need. One executable of one
        shape adds every entry's products in the same order wherever its items sit in the tile, so each
        value equals the one `tile_of` gives (the tests compare with `cosine_distances`), while only the
        tiles that hold a wanted entry are multiplied.
        """
        first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
        low, high = np.minimum(first, second), np.maximum(first, second)
        t = self.tile
        raw = np.empty(len(first), np.float32)
        order = np.lexsort((high, low))
        lows = np.unique(low)
        for group in np.split(lows, np.arange(t, lows.size, t)):
            part = order[np.searchsorted(low[order], group[0]):np.searchsorted(low[order], group[-1], "right")]
            row_of = np.searchsorted(group, low[part])
            highs = np.unique(high[part])
            col_of = np.searchsorted(highs, high[part])
            rows = jnp.asarray(np.concatenate([group, np.full(t - group.size, self.n)]), jnp.int32)
            for c in range(0, highs.size, t):
                sel = np.flatnonzero((col_of >= c) & (col_of < c + t))
                cols = highs[c:c + t]
                tile = _cosine_tile(self.features, rows,
                                    jnp.asarray(np.concatenate([cols, np.full(t - cols.size, self.n)]), jnp.int32))
                size = _next_pow2(sel.size)  # few shapes, few compilations
                take = sel[np.minimum(np.arange(size), sel.size - 1)]
                got = _tile_entries(tile, jnp.asarray(row_of[take], jnp.int32), jnp.asarray(col_of[take] - c, jnp.int32))
                raw[part[sel]] = np.asarray(got)[:sel.size]
        return _normalise_entries(jnp.asarray(raw), self.row_max, jnp.asarray(first, jnp.int32))


@jax.jit
def _matrix_block(dist: jax.Array, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rows of D for items `rows` [B] (column i of the matrix is row i of D) → (D [B, N], row maxima [B])."""
    raw = jnp.square(dist[:, rows].T)
    m = jnp.max(raw, axis=1)
    return _per_row(raw, m), m


@functools.partial(jax.jit, static_argnames=("keep",))
def _nearest_rows(d: jax.Array, *, keep: int) -> tuple[jax.Array, jax.Array]:
    neg, idx = jax.lax.top_k(-d, keep)
    return -neg, idx


@jax.jit
def _matrix_entries(dist: jax.Array, m: jax.Array, first: jax.Array, second: jax.Array) -> jax.Array:
    return jnp.square(dist[second, first]) * (1.0 / m)[first]


class _MatrixSource:
    """D from a non-negative distance matrix [N, N] (as re-ranking gets it), a block of rows at a time."""

    def __init__(self, dist, block: int | None = None):
        self.dist = _check_square(dist, "the k-reciprocal encoding")
        self.n = int(self.dist.shape[0])
        self.block = max(1, min(self.n, block or max(8, _BLOCK_ELEMENTS // self.n)))
        self.row_max = None

    def nearest(self, keep: int, k_top: int) -> _Nearest:
        del k_top  # whole rows: exact
        n, b = self.n, self.block
        values, columns, maxima = [], [], []
        for start in range(0, n, b):
            rows = jnp.asarray(np.minimum(np.arange(start, start + b), n - 1), jnp.int32)  # one shape
            d, m = _matrix_block(self.dist, rows)
            vals, idx = _nearest_rows(d, keep=keep)
            count = min(b, n - start)
            values.append(vals[:count]), columns.append(idx[:count]), maxima.append(m[:count])
        self.row_max = jnp.concatenate(maxima)
        return _Nearest(jnp.concatenate(values), jnp.concatenate(columns))

    def d_at(self, first: np.ndarray, second: np.ndarray) -> jax.Array:
        return _matrix_entries(self.dist, self.row_max, jnp.asarray(first, jnp.int32), jnp.asarray(second, jnp.int32))


def cosine_distances(features, *, tile: int | None = None) -> jax.Array:
    """The [N, N] matrix of 1 − cos the sparse path reads for these features, assembled from the same
    tiles (symmetric): dense `jaccard_distances` of it is what `jaccard_graph` lists (tests, small N)."""
    src = _FeatureSource(features, tile)
    t, n = src.tile, src.n
    out = np.empty((src.blocks * t, src.blocks * t), np.float32)
    for i in range(src.blocks):
        for j in range(i, src.blocks):
            tile = np.asarray(src.tile_of(i, j))
            if i == j:
                tile = np.where(np.arange(t)[:, None] <= np.arange(t)[None, :], tile, tile.T)
            out[i * t:(i + 1) * t, j * t:(j + 1) * t] = tile
            out[j * t:(j + 1) * t, i * t:(i + 1) * t] = tile.T
    return jnp.asarray(out[:n, :n])


@functools.partial(jax.jit, static_argnames=("k_forward", "k_half"))
def _expanded_sets(rank: jax.Array, rows: jax.Array, *, k_forward: int, k_half: int) -> tuple[jax.Array, jax.Array]:
    """Steps 2–3's sets for items `rows` [B] from the neighbour lists rank [N, ≥k_forward] → (their members'
    columns int32 [B, F + F·H] ascending, padded with N; member counts [B]). The dense path's sets."""
    n = rank.shape[0]
    rank_f, rank_h = rank[:, :k_forward], rank[:, :k_half]
    forward = rank_f[rows]  # [B, F]
    reciprocal = jnp.any(rank_f[forward] == rows[:, None, None], axis=2)  # [B, F]: is i in R(c)?
    cand = rank_h[forward]  # [B, F, H]: c's half list
    cand_ok = jnp.any(rank_h[cand] == forward[:, :, None, None], axis=3)  # is c in each one's half list?
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
def _row_weights(d: jax.Array, valid: jax.Array) -> jax.Array:
    """Step 3 on member lists: exp(−D) normalised to sum 1 per row [B, W] (0 at padding)."""
    w = jnp.where(valid, exp_neg(d), 0.0)
    return _per_row(w, _sequential_sum(w))


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
    return union, jnp.where(union < n, acc * (1.0 / k_qe), 0.0), counts


class Encoding(NamedTuple):
    """V of steps 3–4 as padded per-row lists: cols int32 [N, W] ascending (N = padding), vals float32
    [N, W] (0 at padding); W = the largest row's size. Every listed value is > 0."""
    cols: jax.Array
    vals: jax.Array


def _row_blocks(n: int, block: int):
    """Yield (int32 [block] item indices, how many are real) covering 0..n−1; the last block repeats item
    n−1 so every block has one shape (one executable)."""
    for start in range(0, n, block):
        yield jnp.asarray(np.minimum(np.arange(start, start + block), n - 1), jnp.int32), min(block, n - start)


def _concat_width(parts: list, counts: list) -> tuple[list, int]:
    width = max(1, max(int(jax.device_get(jnp.max(c))) for c in counts))
    return [p[:, :width] for p in parts], width


def _encode(source, *, k1: int, k2: int, keep: int | None) -> Encoding:
    """Steps 1–4 without an [N, N] array: V as sparse rows, equal to the dense path's non-zeros bit for bit."""
    n, k1, k2 = source.n, int(k1), int(k2)
    if n < 2 or k1 < 1 or k2 < 1:
        raise ValueError(f"the k-reciprocal encoding needs N ≥ 2 items and k1, k2 ≥ 1, got N={n}, k1={k1}, k2={k2}")
    k_forward, k_half, k_top = _sizes(n, k1, k2)
    keep = min(n, max(k_top + 1, keep or _KEEP))  # one beyond the top-k, to tell a tie at its edge
    near = source.nearest(keep, k_top)
    rank = near.idx[:, :k_top]
    block = max(1, min(n, 1024))

    cols, counts = [], []
    for rows, count in _row_blocks(n, block):
        c, k = _expanded_sets(rank, rows, k_forward=k_forward, k_half=k_half)
        cols.append(c[:count]), counts.append(k[:count])
    cols = jnp.concatenate(_concat_width(cols, counts)[0])  # [N, W]
    d, found = [], []
    for rows, count in _row_blocks(n, block):
        got = _d_from_nearest(cols[rows], near.d[rows], near.idx[rows])
        d.append(got[0][:count]), found.append(got[1][:count])
    d, found = jnp.concatenate(d), jnp.concatenate(found)
    valid = cols < n
    first, slot = np.nonzero(np.asarray(valid & ~found))  # members beyond the kept nearest: D read again
    if first.size:
        d = d.at[first, slot].set(source.d_at(first, np.asarray(cols)[first, slot]))
    vals = _row_weights(d, valid)
    if k2 == 1:
        return Encoding(cols, vals)

    parts = ([], [], [])
    for rows, count in _row_blocks(n, block):
        for part, x in zip(parts, _query_expansion(cols, vals, rank, rows, k_qe=min(k2, n))):
            part.append(x[:count])
    union, _ = _concat_width(parts[0], parts[2])
    values, _ = _concat_width(parts[1], parts[2])
    return Encoding(jnp.concatenate(union), jnp.concatenate(values))


def feature_encoding(features, *, k1: int, k2: int, tile: int | None = None, keep: int | None = None) -> Encoding:
    """V for L2-normalised features [N, Dim] under D = 1 − cos (the matrix `cosine_distances` gives)."""
    return _encode(_FeatureSource(features, tile), k1=k1, k2=k2, keep=keep)


def candidate_pairs(enc: Encoding, *, min_overlap: float = 0.0,
                    queries: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs that may have m ≥ min_overlap, a superset of them (m = Σ_k min(V[i, k], V[g, k])) → (first,
    second) int64 [P], sorted by first then second: all pairs first < second, or with `queries` = Nq the
    pairs first < Nq ≤ second (re-ranking's query × gallery). min_overlap 0: every pair whose rows share
    a column (the others have m = 0, Jaccard distance 1).

    min_overlap > 0: min(a, b) ≤ √(a·b), so m ≤ Σ_k √V[i, k] · √V[g, k], one sparse product of √V with its
    transpose; the pairs whose bound falls below min_overlap are dropped. The bound is tight where V's rows
    are alike, as the pairs near a clustering radius are (at MARS size it keeps about 1% more pairs than
    lie within the radius).
    """
    cols = np.asarray(enc.cols)
    n = cols.shape[0]
    valid = cols < n
    data = np.sqrt(np.asarray(enc.vals, np.float64)[valid]) if min_overlap > 0 else np.ones(int(valid.sum()), np.int32)
    rows = scipy.sparse.csr_matrix((data, cols[valid], np.concatenate([[0], np.cumsum(valid.sum(axis=1))])),
                                   shape=(n, n))
    stop = n if queries is None else int(queries)
    others = None if queries is None else rows[stop:].T.tocsr()
    firsts, seconds = [], []
    for start in range(0, stop, _PAIR_ROWS):
        end = min(start + _PAIR_ROWS, stop)
        offset = start if queries is None else stop  # all pairs: only the rows from this block on
        block = (rows[start:end] @ (rows[start:].T if queries is None else others)).tocsr()  # columns unsorted
        first = np.repeat(np.arange(start, end, dtype=np.int64), np.diff(block.indptr))
        second = block.indices.astype(np.int64) + offset
        keep = second > first if queries is None else np.ones(first.shape, bool)
        if min_overlap > 0:
            keep &= block.data >= min_overlap - _MARGIN
        first, second = first[keep], second[keep]
        order = np.lexsort((second, first))
        firsts.append(first[order])
        seconds.append(second[order])
    return np.concatenate(firsts), np.concatenate(seconds)


@jax.jit
def _dense_rows(cols: jax.Array, vals: jax.Array, rows: jax.Array) -> jax.Array:
    """Rows `rows` [B] of V as dense [B, N + 1] (column N: padding, always 0)."""
    n = cols.shape[0]
    out = jnp.zeros((rows.shape[0], n + 1), jnp.float32)
    return out.at[jnp.arange(rows.shape[0])[:, None], cols[rows]].set(vals[rows])


@jax.jit
def _pair_jaccard(cols: jax.Array, vals: jax.Array, dense: jax.Array, local: jax.Array,
                  second: jax.Array) -> jax.Array:
    """Step 5 for pairs [P] (first = row `local` of `dense`): m added over second's columns in increasing
    order (absent ones add min(·, 0) = 0, exactly), then 1 − m / (2 − m)."""
    m = _sequential_sum(jnp.minimum(dense[local[:, None], cols[second]], vals[second]))
    return 1.0 - m / (2.0 - m)


def pair_jaccard(enc: Encoding, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Jaccard distances float32 [P] of the pairs (first[p], second[p]) sorted by first, bit for bit the
    dense path's."""
    n = enc.cols.shape[0]
    out = np.empty(len(first), np.float32)
    block = max(1, min(n, _BUFFER_ELEMENTS // (n + 1)))
    bounds = np.searchsorted(first, np.arange(0, n + block, block))
    for b, start in enumerate(range(0, n, block)):
        lo, hi = bounds[b], bounds[b + 1]
        if lo == hi:
            continue
        dense = _dense_rows(enc.cols, enc.vals, jnp.asarray(np.minimum(np.arange(start, start + block), n - 1),
                                                             jnp.int32))
        for c in range(lo, hi, _PAIR_CHUNK):
            take = np.minimum(np.arange(c, c + _PAIR_CHUNK), hi - 1)  # one shape per call
            got = _pair_jaccard(enc.cols, enc.vals, dense, jnp.asarray(first[take] - start, jnp.int32),
                                jnp.asarray(second[take], jnp.int32))
            out[c:min(c + _PAIR_CHUNK, hi)] = np.asarray(got)[:min(_PAIR_CHUNK, hi - c)]
    return out


def min_overlap_within(radius: float) -> float:
    """The least m = Σ_k min(V[i, k], V[g, k]) with Jaccard distance 1 − m / (2 − m) ≤ radius."""
    return 2.0 * (1.0 - radius) / (2.0 - radius)


def jaccard_graph(features, *, k1: int, k2: int, radius: float, tile: int | None = None,
                  keep: int | None = None) -> clustering.RadiusGraph:
    """The pairs of items within Jaccard distance `radius` of each other (λ = 0, as Cluster-Contrast/SpCL
    cluster on), from L2-normalised features [N, Dim] under D = 1 − cos, in O(N·k) memory: what
    `clustering.dbscan` reads in place of `jaccard_distances(cosine_distances(features))`, with the same
    values. radius ≥ 1 lists every pair whose rows of V overlap (the others are at exactly 1)."""
    if radius < 0:
        raise ValueError(f"jaccard_graph: radius={radius} must be ≥ 0")
    enc = feature_encoding(features, k1=k1, k2=k2, tile=tile, keep=keep)
    first, second = candidate_pairs(enc, min_overlap=min_overlap_within(radius) if radius < 1 else 0.0)
    distance = pair_jaccard(enc, first, second)
    near = distance <= radius
    return clustering.RadiusGraph(int(enc.cols.shape[0]), first[near], second[near], distance[near], float(radius))


def matrix_rerank(dist, num_query: int, *, k1: int, k2: int, lambda_value: float,
                  block: int | None = None, keep: int | None = None) -> jax.Array:
    """Re-ranked distances (1 − λ) J + λ D [Nq, Ng] from a non-negative distance matrix [N, N] (queries
    first), J from the sparse encoding: bit for bit `dense_jaccard(*dense_encoding(dist))` on the
    query × gallery block, without V or J as [N, N] arrays."""
    src = _MatrixSource(dist, block)
    n, nq = src.n, int(num_query)
    enc = _encode(src, k1=k1, k2=k2, keep=keep)
    first, second = candidate_pairs(enc, queries=nq)
    jaccard = np.ones((nq, n - nq), np.float32)
    jaccard[first, second - nq] = pair_jaccard(enc, first, second)
    return combine(jnp.asarray(jaccard), _query_gallery_d(src.dist, src.row_max, nq), lambda_value=float(lambda_value))


@functools.partial(jax.jit, static_argnames=("num_query",))
def _query_gallery_d(dist: jax.Array, row_max: jax.Array, num_query: int) -> jax.Array:
    """D on the query rows and gallery columns [Nq, Ng]: dist[g, q]² / the query's row maximum."""
    return _per_row(jnp.square(dist[num_query:, :num_query].T), row_max[:num_query])
