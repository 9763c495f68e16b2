"""k-means, on device (jit-able, fixed iterations) for the paper variant's teacher and on the host
(numpy, sklearn's defaults) for the reference variant's consistency constant; DBSCAN (host, numpy/scipy)
for the `plus` variant's pseudo-identities, on a radius graph (`RadiusGraph`: the pairs within a radius,
what kreciprocal.jaccard_graph gives in O(N·k) memory) or on a dense distance matrix (the reference).

Shapes: N points of dimension D, K clusters.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse
import scipy.sparse.csgraph


def squared_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """[N, D], [K, D] → [N, K] squared Euclidean distances, clamped at 0."""
    return jnp.maximum(
        jnp.sum(x * x, -1)[:, None] + jnp.sum(centroids * centroids, -1)[None, :] - 2.0 * x @ centroids.T, 0.0
    )


def kmeans_plus_plus_init(rng: jax.Array, points: jax.Array, num_clusters: int) -> jax.Array:
    """k-means++ seeding: the first centroid uniformly, each next one ∝ squared distance to the nearest.

    points [N, D] float32 → centroids [num_clusters, D], each a row of points.
    """
    n = points.shape[0]
    first_key, seed_key = jax.random.split(rng)
    first = jax.random.randint(first_key, (), 0, n)
    centroids = jnp.zeros((num_clusters, points.shape[1]), points.dtype).at[0].set(points[first])

    def seed_one(i, carry):
        centroids, key = carry
        key, sub = jax.random.split(key)
        d2 = squared_distances(points, centroids)
        d2 = jnp.where(jnp.arange(num_clusters)[None, :] < i, d2, jnp.inf)  # only centroids chosen so far
        nearest = jnp.min(d2, axis=1)
        logits = jnp.where(nearest > 0, jnp.log(jnp.maximum(nearest, 1e-30)), -jnp.inf)
        # Every point already is a centroid (fewer distinct points than clusters): draw uniformly.
        logits = jnp.where(jnp.all(jnp.isinf(logits)), jnp.zeros_like(logits), logits)
        pick = jax.random.categorical(sub, logits)
        return centroids.at[i].set(points[pick]), key

    centroids, _ = jax.lax.fori_loop(1, num_clusters, seed_one, (centroids, seed_key))
    return centroids


def lloyd_iterations(points: jax.Array, centroids: jax.Array, num_iters: int) -> jax.Array:
    """num_iters rounds of assign-to-nearest then move-to-mean. An empty cluster keeps its centroid."""
    num_clusters = centroids.shape[0]

    def lloyd(_, centroids):
        assign = jnp.argmin(squared_distances(points, centroids), axis=1)
        onehot = jax.nn.one_hot(assign, num_clusters, dtype=points.dtype)
        counts = jnp.sum(onehot, axis=0)
        sums = onehot.T @ points
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centroids)

    return jax.lax.fori_loop(0, num_iters, lloyd, centroids)


def kmeans(rng: jax.Array, points: jax.Array, num_clusters: int, num_iters: int = 10) -> tuple[jax.Array, jax.Array]:
    """k-means with k-means++ seeding and a fixed number of Lloyd iterations (jit-able, on device).

    points [N, D]. Returns (centroids [num_clusters, D] float32, assignment [N] int32). Deterministic
    for a given rng. The reference runs sklearn on the host (n_init=10, up to 300 iterations); a
    fixed small count keeps the step pure and cheap, and batches of 32 clips converge in a few.
    """
    points = points.astype(jnp.float32)
    centroids = lloyd_iterations(points, kmeans_plus_plus_init(rng, points, num_clusters), num_iters)
    assign = jnp.argmin(squared_distances(points, centroids), axis=1).astype(jnp.int32)
    return centroids, assign


def kmeans_numpy(points: np.ndarray, num_clusters: int, *, n_init: int = 10, max_iter: int = 300,
                 tol: float = 1e-4, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Host k-means as the reference runs it (sklearn 1.0 KMeans defaults, re-written in numpy).

    points [N, D] → (centroids [K, D] float64, labels [N] int64, inertia). Greedy k-means++ seeding
    (2 + ⌊ln K⌋ candidates per centre, the best kept), Lloyd iterations until the squared centre shift
    falls below tol · mean per-feature variance or max_iter, best inertia of n_init runs. The
    labels are the final nearest-centre assignment. An empty cluster keeps its centre (sklearn
    relocates it; with 2B = 64 points and 16 clusters this is rare and only moves L_dist slightly).
    """
    x = np.asarray(points, np.float64)
    n = x.shape[0]
    if n < num_clusters:
        raise ValueError(f"kmeans_numpy: {n} points cannot make {num_clusters} clusters")
    rng = np.random.default_rng() if rng is None else rng
    threshold = tol * float(np.mean(np.var(x, axis=0)))
    sq_norms = np.sum(x * x, axis=1)

    def sq_dist(c):
        return np.maximum(sq_norms[:, None] + np.sum(c * c, axis=1)[None, :] - 2.0 * x @ c.T, 0.0)

    def seed():
        trials = 2 + int(np.log(num_clusters))
        centres = [x[rng.integers(n)]]
        closest = sq_dist(np.asarray(centres))[:, 0]
        for _ in range(1, num_clusters):
            total = closest.sum()
            if total <= 0:  # all points coincide with chosen centres
                cand = rng.integers(n, size=trials)
            else:
                cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
                cand = np.minimum(cand, n - 1)
            pots = np.minimum(closest[:, None], sq_dist(x[cand]))  # [N, trials]
            best = int(np.argmin(pots.sum(axis=0)))
            centres.append(x[cand[best]])
            closest = pots[:, best]
        return np.asarray(centres)

    best = None
    for _ in range(n_init):
        centres = seed()
        for _ in range(max_iter):
            labels = np.argmin(sq_dist(centres), axis=1)
            new = centres.copy()
            for k in range(num_clusters):
                members = labels == k
                if members.any():
                    new[k] = x[members].mean(axis=0)
            shift = float(np.sum((new - centres) ** 2))
            centres = new
            if shift <= threshold:
                break
        d2 = sq_dist(centres)
        labels = np.argmin(d2, axis=1)
        inertia = float(d2[np.arange(n), labels].sum())
        if best is None or inertia < best[2]:
            best = (centres, labels, inertia)
    return best


class RadiusGraph(NamedTuple):
    """The pairs of num_points points within `radius` of each other: first < second int64 [E] and their
    distance float32 [E]. Every pair not listed lies farther than radius and at most `ceiling`."""
    num_points: int
    first: np.ndarray
    second: np.ndarray
    distance: np.ndarray
    radius: float
    ceiling: float = 1.0


def dbscan(distances, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN on a precomputed symmetric distance matrix [N, N] or a `RadiusGraph` → int32 labels [N],
    −1 for outliers.

    A point is core when at least `min_samples` points (itself included, as sklearn counts) lie within
    `eps`. Clusters are the connected components of the core points under that neighbourhood; a
    non-core point within eps of some core point joins the cluster of its nearest one (ties: the lower
    index), every other point is an outlier. Unlike sklearn, whose border points go to whichever
    cluster reaches them first, nothing depends on visiting order. Clusters are numbered by their
    lowest core index, so the labels are a function of the distances alone: the graph and the dense
    matrix with the same distances give the same labels.
    """
    if isinstance(distances, RadiusGraph):
        return _dbscan_graph(distances, eps, min_samples)
    d = np.asarray(distances)
    n = d.shape[0]
    if d.ndim != 2 or d.shape[1] != n:
        raise ValueError(f"dbscan needs a square [N, N] distance matrix, got shape {d.shape}")
    near = d <= eps
    np.fill_diagonal(near, True)
    core = near.sum(axis=1) >= min_samples
    labels = np.full(n, -1, np.int32)
    core_index = np.flatnonzero(core)
    if core_index.size == 0:
        return labels
    graph = scipy.sparse.csr_matrix(near[np.ix_(core_index, core_index)])
    # connected_components numbers components in order of their lowest node, and core_index is sorted.
    _, component = scipy.sparse.csgraph.connected_components(graph, directed=False)
    labels[core_index] = component
    border = np.flatnonzero(~core & near[:, core].any(axis=1))
    if border.size:
        to_core = np.where(near[np.ix_(border, core_index)], d[np.ix_(border, core_index)], np.inf)
        labels[border] = component[np.argmin(to_core, axis=1)]
    return labels


def _dbscan_graph(graph: RadiusGraph, eps: float, min_samples: int) -> np.ndarray:
    """`dbscan` on the listed pairs: O(N + E) memory."""
    n = int(graph.num_points)
    labels = np.full(n, -1, np.int32)
    if eps >= graph.ceiling:  # every pair is within eps: one cluster of all, or no core point
        labels[:] = 0 if n >= min_samples else -1
        return labels
    if eps > graph.radius:
        raise ValueError(f"dbscan: eps={eps} exceeds the radius graph's radius {graph.radius} (pairs beyond it "
                         f"are not listed)")
    within = np.asarray(graph.distance) <= eps
    first, second = np.asarray(graph.first)[within], np.asarray(graph.second)[within]
    distance = np.asarray(graph.distance)[within]
    core = 1 + np.bincount(first, minlength=n) + np.bincount(second, minlength=n) >= min_samples
    core_index = np.flatnonzero(core)
    if core_index.size == 0:
        return labels
    position = np.cumsum(core) - 1  # index among the core points, which keep their order
    both = core[first] & core[second]
    links = scipy.sparse.csr_matrix((np.ones(int(both.sum()), np.int8), (position[first[both]], position[second[both]])),
                                    shape=(core_index.size, core_index.size))
    _, component = scipy.sparse.csgraph.connected_components(links, directed=False)
    labels[core_index] = component
    # Border points: each pair in both directions, a non-core end taking its nearest core end (ties: lower index).
    src, dst = np.concatenate([first, second]), np.concatenate([second, first])
    dist = np.concatenate([distance, distance])
    to_core = ~core[src] & core[dst]
    src, dst, dist = src[to_core], dst[to_core], dist[to_core]
    order = np.lexsort((dst, dist, src))
    src, dst = src[order], dst[order]
    nearest = np.concatenate([[True], src[1:] != src[:-1]]) if src.size else np.zeros(0, bool)
    labels[src[nearest]] = labels[dst[nearest]]
    return labels


def membership_iou(labels: np.ndarray, other: np.ndarray) -> np.ndarray:
    """For each point, the intersection over union of its cluster in `labels` and its cluster in `other`
    (int [N] each, −1 = outlier) → float64 [N]; NaN where `labels` has an outlier.

    An outlier of `other` counts as a cluster of its own, so a clustered point that `other` leaves
    alone scores 1 / |its cluster|.
    """
    labels, other = np.asarray(labels, np.int64), np.asarray(other, np.int64)
    if labels.shape != other.shape or labels.ndim != 1:
        raise ValueError(f"membership_iou needs two label vectors of one length, got {labels.shape} and {other.shape}")
    alone = other < 0
    other = other.copy()
    other[alone] = other.max(initial=-1) + 1 + np.arange(int(alone.sum()))
    clustered = labels >= 0
    size_own = np.bincount(labels[clustered], minlength=1)
    size_other = np.bincount(other)
    pair = labels * (other.max(initial=0) + 1) + other
    _, pair_index, pair_count = np.unique(pair[clustered], return_inverse=True, return_counts=True)
    both = pair_count[pair_index].astype(np.float64)
    iou = np.full(labels.shape, np.nan)
    iou[clustered] = both / (size_own[labels[clustered]] + size_other[other[clustered]] - both)
    return iou


def reliable_dbscan(distances, eps: float, min_samples: int, delta: float, min_iou: float) -> np.ndarray:
    """DBSCAN (see `dbscan`: a dense matrix, or a `RadiusGraph` whose radius reaches eps + delta) that keeps
    a point's cluster only when it is stable: its cluster at eps must overlap by at least `min_iou` (intersection over union) both its cluster at eps + delta (the
    cluster does not merge into others when loosened) and at eps − delta (it does not fall apart when
    tightened). Other points become outliers (−1). Labels int32 [N], numbered as `dbscan` numbers them.
    """
    labels = dbscan(distances, eps, min_samples)
    loose = dbscan(distances, eps + delta, min_samples)
    tight = dbscan(distances, max(eps - delta, 0.0), min_samples)
    stable = (np.nan_to_num(membership_iou(labels, loose)) >= min_iou) & (np.nan_to_num(membership_iou(labels, tight)) >= min_iou)
    return np.where(stable, labels, -1).astype(np.int32)
