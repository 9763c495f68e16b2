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

How it runs here: the sparse path of `kreciprocal` (its docstring), shared with the `plus` variant's
clustering. Neighbour lists come from `lax.top_k` on blocks of rows of D (no full sort; on exact
distance ties the lower index comes first, where NumPy's unstable argsort order is unspecified); V is
kept as padded per-row lists of its non-zeros; m is computed only for the query–gallery pairs whose rows
of V share a column (every other pair has m = 0, J = 1), adding the terms in increasing column order as
the NumPy code does. The result equals the dense reference (`kreciprocal.dense_encoding` and
`dense_jaccard`, [N, N] arrays) bit for bit; it agrees with the NumPy code to float32 rounding (exp(−D)
is a polynomial, `kreciprocal.exp_neg`, with relative error < 5e-7). Memory: the input matrix and the
[Nq, Ng] output, plus O(N·k) for V and the pairs.

Distances. Step 1 squares the distances, so they must be non-negative. `rerank_features` turns the
project's metrics into such distances: 'cosine' → 1 − cos (the −q·g of `ranking.pairwise_distance` plus
1), 'euclidean' → itself, 'inner' → −q·g minus its minimum over the whole (Nq+Ng)² matrix.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from svreid_jax import kreciprocal
from svreid_jax.evaluation import ranking

K1, K2, LAMBDA = 20, 6, 0.3  # the paper's (and torchreid's) defaults


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
    return kreciprocal.matrix_rerank(dist, int(num_query), k1=int(k1), k2=int(k2), lambda_value=float(lambda_value))


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
