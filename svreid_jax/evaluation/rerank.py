"""k-reciprocal re-ranking (Zhong et al., CVPR'17) in JAX, on device.

The computation follows the widely copied NumPy `re_ranking(q_g, q_q, g_g, k1=20, k2=6, lambda=0.3)`
(torchreid `utils/rerank.py`, docs/METHOD.md §7.2) step by step, so its results match that code to float32
rounding:

1. D = the (Nq+Ng)² matrix [[q_q, q_g], [q_gᵀ, g_g]], squared, each column divided by its maximum, then
   transposed (for a symmetric D: each row divided by its maximum).
2. R(i) = the k1+1 nearest items of i (i itself included); the k-reciprocal set is
   {j in R(i) : i in R(j)}. For every member c of that set, its own k-reciprocal set with
   round(k1/2)+1 neighbours is added when more than 2/3 of it already lies in the set of i.
3. V[i, j] = exp(−D[i, j]) over the expanded set of i, normalised to sum 1 (0 elsewhere).
4. Local query expansion (k2 > 1): V[i] = mean of V over the k2 nearest items of i.
5. Jaccard distance J[q, g] = 1 − m / (2 − m), m = Σ_k min(V[q, k], V[g, k]);
   result = (1 − λ) J + λ D, restricted to the query rows and gallery columns.

How it runs here. Neighbour lists come from `lax.top_k` (no full sort; on exact distance ties the lower
index comes first, where NumPy's unstable argsort order is unspecified). The k-reciprocal tests compare
small index tables ([N, k1+1, k1+1]); V is a dense [N, N] float32 matrix (as in the NumPy code); and
m is computed from the non-zero entries of each query row of V only (V ≥ 0, so the other terms are
min(0, ·) = 0): a gather of K rows of Vᵀ per query, K = the largest number of non-zeros of a query row
rounded up to a power of two, in chunks of queries so the [chunk, K, Ng] temporary stays bounded.
Memory is dominated by the two or three N² float32 matrices (MARS, N = 11,310: about 0.5 GB each).

Distances. Step 1 squares the distances, so they must be non-negative. `rerank_features` turns the
project's metrics into such distances: 'cosine' → 1 − cos (the −q·g of `ranking.pairwise_distance` plus
1), 'euclidean' → itself, 'inner' → −q·g minus its minimum over the whole (Nq+Ng)² matrix.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from svreid_jax.evaluation import ranking

K1, K2, LAMBDA = 20, 6, 0.3  # the paper's (and torchreid's) defaults
_CHUNK_ELEMENTS = 1 << 25  # bound on chunk * K * Ng in the Jaccard step (128 MiB of float32)


def _sizes(n: int, k1: int, k2: int) -> tuple[int, int, int]:
    """(forward list length, half list length, top-k length) for n items, clipped as NumPy slices are."""
    k_forward = min(k1 + 1, n)
    k_half = min(int(np.around(k1 / 2.0)) + 1, n)
    return k_forward, k_half, min(max(k1 + 1, k2), n)


@functools.partial(jax.jit, static_argnames=("k_top",))
def _neighbours(dist: jax.Array, *, k_top: int) -> tuple[jax.Array, jax.Array]:
    """Step 1 and the neighbour lists → (normalised D [N, N], the k_top nearest of each item [N, k_top])."""
    d = jnp.square(dist.astype(jnp.float32))
    d = (d / jnp.max(d, axis=0, keepdims=True)).T
    return d, jax.lax.top_k(-d, k_top)[1]


def _encoding(dist: jax.Array, *, k1: int, k2: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Steps 1–4 on the full [N, N] distance matrix → (normalised D [N, N], V [N, N], non-zeros per row).

    Two executables: compiled together with what consumes the neighbour lists, XLA:CPU made the top-k
    some 30× slower (MARS size: 30 s instead of 1 s on 2 cores).
    """
    n = dist.shape[0]
    d, rank = _neighbours(dist, k_top=_sizes(n, k1, k2)[2])
    return _expansion(d, rank, k1=k1, k2=k2)


@functools.partial(jax.jit, static_argnames=("k1", "k2"))
def _expansion(d: jax.Array, rank: jax.Array, *, k1: int, k2: int) -> tuple[jax.Array, jax.Array, jax.Array]:
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
    weight = jnp.where(member, jnp.exp(-d), 0.0)
    v = weight / jnp.sum(weight, axis=1, keepdims=True)

    if k2 != 1:
        v = jax.lax.optimization_barrier(v)  # else each gathered row recomputes its weights (3× slower on CPU)
        k_qe = min(k2, n)
        acc = v[rank[:, 0]]
        for t in range(1, k_qe):
            acc = acc + v[rank[:, t]]
        v = acc / k_qe
    return d, v, jnp.sum(v != 0, axis=1)


@functools.partial(jax.jit, static_argnames=("num_query", "k", "chunk", "lambda_value"))
def _jaccard(d: jax.Array, v: jax.Array, *, num_query: int, k: int, chunk: int, lambda_value: float) -> jax.Array:
    """Step 5 → [Nq, Ng]."""
    vals, idx = jax.lax.top_k(v[:num_query], k)  # the (at most k) non-zeros of each query row, and zeros
    v_gallery_t = v[num_query:].T  # [N, Ng]: column k of V over the gallery rows

    def one_query(args):
        values, index = args  # [k], [k]
        return jnp.sum(jnp.minimum(values[:, None], v_gallery_t[index]), axis=0)  # [Ng]

    m = jax.lax.map(one_query, (vals, idx), batch_size=chunk)
    jaccard = 1.0 - m / (2.0 - m)
    return jaccard * (1.0 - lambda_value) + d[:num_query, num_query:] * lambda_value


def rerank_full(dist, num_query: int, *, k1: int = K1, k2: int = K2, lambda_value: float = LAMBDA) -> jax.Array:
    """Re-ranked distances [Nq, Ng] from the full [N, N] matrix of non-negative distances (queries first).

    dist: [N, N] with N = Nq + Ng, rows/columns 0..Nq−1 the queries; symmetric in practice.
    """
    dist = jnp.asarray(dist, jnp.float32)
    n = dist.shape[0]
    if dist.ndim != 2 or dist.shape[1] != n:
        raise ValueError(f"rerank_full needs a square [N, N] distance matrix, got shape {dist.shape}")
    if not 0 < num_query < n:
        raise ValueError(f"num_query={num_query} must leave at least one query and one gallery item of {n}")
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1={k1} and k2={k2} must be positive")
    d, v, nonzeros = _encoding(dist, k1=int(k1), k2=int(k2))
    k = min(ranking._next_pow2(int(jax.device_get(jnp.max(nonzeros[:num_query])))), n)
    chunk = max(1, min(num_query, _CHUNK_ELEMENTS // max(1, k * (n - num_query))))
    return _jaccard(d, v, num_query=int(num_query), k=max(k, 1), chunk=chunk, lambda_value=float(lambda_value))


def k_reciprocal(q_g, q_q, g_g, *, k1: int = K1, k2: int = K2, lambda_value: float = LAMBDA) -> jax.Array:
    """Re-ranked query-gallery distances [Nq, Ng], the NumPy `re_ranking(q_g, q_q, g_g, k1, k2, λ)` in JAX.

    q_g [Nq, Ng], q_q [Nq, Nq], g_g [Ng, Ng]: non-negative distances (see the module docstring).
    """
    q_g, q_q, g_g = (jnp.asarray(x, jnp.float32) for x in (q_g, q_q, g_g))
    nq, ng = q_g.shape
    if q_q.shape != (nq, nq) or g_g.shape != (ng, ng):
        raise ValueError(f"shapes do not fit: q_g {q_g.shape}, q_q {q_q.shape}, g_g {g_g.shape}")
    full = jnp.concatenate([jnp.concatenate([q_q, q_g], axis=1), jnp.concatenate([q_g.T, g_g], axis=1)], axis=0)
    return rerank_full(full, nq, k1=k1, k2=k2, lambda_value=lambda_value)


def non_negative_distances(features, metric: str) -> jax.Array:
    """[N, N] distances between all rows of `features` [N, D], made non-negative for re-ranking."""
    d = ranking.pairwise_distance(features, features, metric=metric)
    if metric == "cosine":
        return d + 1.0  # 1 − cos
    if metric == "inner":
        return d - jnp.min(d)
    return d


def rerank_features(query_features, gallery_features, *, metric: str = "cosine", k1: int = K1, k2: int = K2,
                    lambda_value: float = LAMBDA) -> jax.Array:
    """Re-ranked distances [Nq, Ng] for query [Nq, D] and gallery [Ng, D] features under `metric`."""
    q = jnp.asarray(query_features, jnp.float32)
    g = jnp.asarray(gallery_features, jnp.float32)
    d = non_negative_distances(jnp.concatenate([q, g], axis=0), metric)
    return rerank_full(d, q.shape[0], k1=k1, k2=k2, lambda_value=lambda_value)


__all__ = ["K1", "K2", "LAMBDA", "k_reciprocal", "non_negative_distances", "rerank_features", "rerank_full"]
