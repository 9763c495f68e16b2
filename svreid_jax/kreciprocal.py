"""k-reciprocal encoding and Jaccard distances (Zhong et al., CVPR'17), on device.

Shared by re-ranking at evaluation (evaluation/rerank.py, whose docstring walks through steps 1–5 and
how they run here) and by the `plus` variant's DBSCAN, which clusters the whole target training set on
all-pairs Jaccard distances (`jaccard_distances`). N items; distances non-negative [N, N] float32.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

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


def encoding(dist: jax.Array, *, k1: int, k2: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Steps 1–4 on the full [N, N] distance matrix → (normalised D [N, N], V [N, N], non-zeros per row).

    Two executables: compiled together with what consumes the neighbour lists, XLA:CPU makes the top-k
    an order of magnitude slower (BENCHMARKS.md, clustering).
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


@functools.partial(jax.jit, static_argnames=("num_query", "gallery_start", "k", "chunk", "lambda_value"))
def _jaccard(d: jax.Array, v: jax.Array, *, num_query: int, gallery_start: int, k: int, chunk: int,
             lambda_value: float) -> jax.Array:
    """Step 5 → [Nq, Ng], the queries rows 0..num_query−1 and the gallery rows gallery_start..N−1."""
    vals, idx = jax.lax.top_k(v[:num_query], k)  # the (at most k) non-zeros of each query row, and zeros
    v_gallery_t = v[gallery_start:].T  # [N, Ng]: column k of V over the gallery rows

    def one_query(args):
        values, index = args  # [k], [k]
        return jnp.sum(jnp.minimum(values[:, None], v_gallery_t[index]), axis=0)  # [Ng]

    m = jax.lax.map(one_query, (vals, idx), batch_size=chunk)
    jaccard = 1.0 - m / (2.0 - m)
    return jaccard * (1.0 - lambda_value) + d[:num_query, gallery_start:] * lambda_value


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def jaccard(d: jax.Array, v: jax.Array, nonzeros: jax.Array, *, num_query: int, gallery_start: int,
            lambda_value: float) -> jax.Array:
    """Step 5 from `encoding`'s output → (1 − λ) J + λ D, [num_query, N − gallery_start].

    Queries are rows 0..num_query−1, the gallery rows gallery_start..N−1 (re-ranking: gallery_start =
    num_query; all pairs: num_query = N, gallery_start = 0).
    """
    n = d.shape[0]
    k = max(min(_next_pow2(int(jax.device_get(jnp.max(nonzeros[:num_query])))), n), 1)
    chunk = max(1, min(num_query, _CHUNK_ELEMENTS // max(1, k * (n - gallery_start))))
    return _jaccard(d, v, num_query=num_query, gallery_start=gallery_start, k=k, chunk=chunk,
                    lambda_value=float(lambda_value))


def jaccard_distances(dist, *, k1: int, k2: int) -> jax.Array:
    """All-pairs k-reciprocal Jaccard distances [N, N] in [0, 1] from non-negative distances [N, N]
    (no original-distance term: λ = 0, as Cluster-Contrast/SpCL cluster on)."""
    dist = jnp.asarray(dist, jnp.float32)
    n = dist.shape[0]
    if dist.ndim != 2 or dist.shape[1] != n or n < 2:
        raise ValueError(f"jaccard_distances needs a square [N, N] matrix with N ≥ 2, got shape {dist.shape}")
    d, v, nonzeros = encoding(dist, k1=int(k1), k2=int(k2))
    return jaccard(d, v, nonzeros, num_query=n, gallery_start=0, lambda_value=0.0)
