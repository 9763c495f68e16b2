"""The `plus` variant: beyond the paper, unsupervised domain-adaptive re-ID ingredients (docs/METHOD.md "plus").

Once per epoch (`epoch_start`, called by the loop before the epoch's first step) the EMA teacher's
features of the whole target training set are clustered into pseudo-identities (DBSCAN on k-reciprocal
Jaccard distances, or k-means), optionally after subtracting each target camera's mean feature; the
clusters' mean features fill a fixed-capacity memory. The step is the paper step (variants/paper.py)
with the cluster-memory terms of the term table: a cluster-level contrast of the student's target
embeddings against the memory (Cluster-Contrast), optionally the teacher's soft assignment over the
memory as a second target (MMT), and the memory's momentum update after each step.

With plus.camera_proxies (CAP, on in `:plus`) each slot of the memory is one (pseudo-identity, camera)
pair and the contrast is the intra-camera and inter-camera pair of terms instead.

Extra state (TrainState.variant_state), fixed shapes so the step compiles once:
  labels int32 [N_target_train]: the memory slot of each target training tracklet (its pseudo-identity,
    or its proxy), −1 = outlier or not clustered yet; read at the batch's target 'index' (never its pid);
  memory float32 [M, D]: L2-normalised slot centroids, M = plus.max_clusters; valid bool [M];
  with camera_proxies also slot_cluster, slot_camera int32 [M]: each slot's pseudo-identity and camera.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from svreid_jax import clustering, kreciprocal, losses, ops
from svreid_jax.data import sampling
from svreid_jax.variants import common, divergence, paper

CLUSTERINGS = ("dbscan", "kmeans")  # config.plus.clustering
SOFT_TARGETS = ("identity", "proxy")  # config.plus.soft_targets
INTER_CAMERA_POSITIVES = ("all", "other_cameras")  # config.plus.inter_camera_positives
EPS_RULES = ("quantile", "most_clusters")  # config.plus.eps_rule
# The radii most_clusters_eps tries: the k-distances' 5%, 10%, …, 95% quantiles. Steps of 5% of the
# tracklets, not every distinct distance: one pair more or less must not move the pick.
EPS_GRID = tuple(np.arange(1, 20) / 20)


def check_config(config) -> None:
    """One line naming the field of a plus setting that cannot work."""
    common.check_config(config)
    p = config.plus
    if p.clustering not in CLUSTERINGS:
        raise ValueError(f"config.plus.clustering={p.clustering!r}; expected one of {CLUSTERINGS}")
    proxy_weights = config.loss.intra_camera > 0 or config.loss.inter_camera > 0
    if config.loss.cluster_contrast <= 0 and config.loss.cluster_soft <= 0 and not proxy_weights:
        raise ValueError("variant 'plus' needs config.loss.cluster_contrast, cluster_soft, intra_camera or "
                         "inter_camera > 0 (its cluster memory is read by nothing else)")
    if proxy_weights and not p.camera_proxies:
        raise ValueError(f"config.loss.intra_camera={config.loss.intra_camera} / inter_camera="
                         f"{config.loss.inter_camera} read camera-aware proxies; set config.plus.camera_proxies=True")
    if p.camera_proxies and config.loss.cluster_contrast > 0:
        raise ValueError(f"config.loss.cluster_contrast={config.loss.cluster_contrast} with plus.camera_proxies would "
                         "push a clip away from its own pseudo-identity's proxies in other cameras; use "
                         "config.loss.intra_camera / inter_camera instead (set cluster_contrast=0)")
    if p.camera_proxies and not 1 <= p.hard_negatives <= p.max_clusters:
        raise ValueError(f"config.plus.hard_negatives={p.hard_negatives} must lie in 1..plus.max_clusters="
                         f"{p.max_clusters}")
    if p.reliable_delta < 0 or not 0.0 <= p.reliable_min_iou <= 1.0:
        raise ValueError(f"config.plus.reliable_delta={p.reliable_delta} must be ≥ 0 and config.plus.reliable_min_iou="
                         f"{p.reliable_min_iou} in [0, 1]")
    if p.reliable_delta > 0 and p.clustering != "dbscan":
        raise ValueError(f"config.plus.reliable_delta={p.reliable_delta} re-runs DBSCAN at eps ± delta; it needs "
                         f"config.plus.clustering='dbscan', not {p.clustering!r}")
    if p.cluster_temporal and p.cluster_temporal not in sampling.EVAL_TEMPORAL_METHODS:
        raise ValueError(f"config.plus.cluster_temporal={p.cluster_temporal!r}; expected '' (the evaluation's clips) "
                         f"or one of {sampling.EVAL_TEMPORAL_METHODS}")
    if p.true_identities and p.reliable_delta > 0:
        raise ValueError(f"config.plus.true_identities=True takes the true identities as they are; "
                         f"config.plus.reliable_delta={p.reliable_delta} would filter a clustering that does not run")
    if p.max_clusters < 1:
        raise ValueError(f"config.plus.max_clusters={p.max_clusters}: the memory needs at least one slot")
    if p.clustering == "kmeans" and not 0 <= p.kmeans_clusters <= p.max_clusters:
        raise ValueError(f"config.plus.kmeans_clusters={p.kmeans_clusters} must lie in 0 (the rule)..plus.max_clusters="
                         f"{p.max_clusters}")
    if p.eps_rule not in EPS_RULES:
        raise ValueError(f"config.plus.eps_rule={p.eps_rule!r}; expected one of {EPS_RULES}")
    if not 0 <= p.eps < 1 or not 0 < p.eps_quantile <= 1:
        raise ValueError(f"config.plus.eps={p.eps} must lie in [0, 1) (0: the rule) and config.plus.eps_quantile="
                         f"{p.eps_quantile} in (0, 1]")
    if p.k1 < 0 or p.k2 < 0 or p.min_samples < 1:
        raise ValueError(f"config.plus.k1={p.k1}, k2={p.k2} must be ≥ 0 (0: the rule) and min_samples="
                         f"{p.min_samples} ≥ 1")
    if p.inter_camera_positives not in INTER_CAMERA_POSITIVES:
        raise ValueError(f"config.plus.inter_camera_positives={p.inter_camera_positives!r}; expected one of "
                         f"{INTER_CAMERA_POSITIVES}")
    if p.soft_targets not in SOFT_TARGETS:
        raise ValueError(f"config.plus.soft_targets={p.soft_targets!r}; expected one of {SOFT_TARGETS}")


def init_state(config, model, params, rng, steps_per_epoch: int, num_target_train: int) -> dict[str, jax.Array]:
    """The empty memory: every tracklet unlabelled, no valid slot (the loss is 0 until the first clustering)."""
    del model, rng, steps_per_epoch
    dim = int(params["bnneck"]["scale"].shape[-1])
    slots = config.plus.max_clusters
    state = {"labels": jnp.full((num_target_train,), -1, jnp.int32),
             "memory": jnp.zeros((slots, dim), jnp.float32),
             "valid": jnp.zeros((slots,), bool)}
    if config.plus.camera_proxies:
        state.update(slot_cluster=jnp.full((slots,), -1, jnp.int32), slot_camera=jnp.full((slots,), -1, jnp.int32))
    return state


def clustering_settings(config, camids: np.ndarray) -> dict[str, int]:
    """The DBSCAN neighbourhood {'k1', 'k2', 'min_samples'} from the label-free rule (a positive
    plus.k1 / plus.k2 overrides it), the same for every dataset; camids int [N] of the target train set.

    k1 = 2 × the target's cameras: a person is filmed once or twice by each camera (MARS: about 13 tracklets
    per identity over 6 cameras; iLIDS-VID and PRID2011: one per camera), so a k-reciprocal neighbourhood
    of that size can hold one person's tracklets. k2 = max(1, round(k1 / 5)), the ratio of the published
    pair (k1 30, k2 6). min_samples = plus.min_samples (2 by default: two tracklets per identity is all a
    re-ID target guarantees). k1 is capped at N − 1.
    """
    p = config.plus
    cameras = len(np.unique(np.asarray(camids)))
    n = len(camids)
    k1 = int(p.k1) if p.k1 > 0 else 2 * cameras
    k1 = max(1, min(k1, n - 1))
    k2 = int(p.k2) if p.k2 > 0 else max(1, round(k1 / 5))
    return {"k1": k1, "k2": min(k2, k1), "min_samples": int(p.min_samples)}


def neighbour_eps(graph: clustering.RadiusGraph, min_samples: int, quantile: float) -> float:
    """The label-free DBSCAN radius: the `quantile` (numpy's 'lower' method, an observed value) of every
    point's distance to its (min_samples − 1)-th nearest other point, the k-distance rule of the DBSCAN
    paper. A point whose neighbourhood is empty is at the graph's ceiling (Jaccard distance 1). With
    min_samples 2 the points within eps of another are exactly the clustered ones, so the quantile is
    the share of points that get a pseudo-identity. Capped below the ceiling (a radius of 1 would join
    every pair); 0 when no point has a neighbour below it.

    graph: the pairs within `graph.radius` ≥ every k-distance wanted (jaccard_graph(radius=1) lists all).
    """
    return _eps_at(_k_distances(graph, min_samples), float(graph.ceiling), quantile)


def _k_distances(graph: clustering.RadiusGraph, min_samples: int) -> np.ndarray:
    """float64 [N]: each point's distance to its (min_samples − 1)-th nearest other point (the ceiling if none)."""
    k = max(min_samples - 1, 1)
    n = graph.num_points
    first = np.concatenate([graph.first, graph.second])
    dist = np.concatenate([graph.distance, graph.distance]).astype(np.float64)
    order = np.lexsort((dist, first))  # by point, then by distance
    first, dist = first[order], dist[order]
    start = np.searchsorted(first, np.arange(n))
    count = np.bincount(first, minlength=n)
    kth = np.full(n, float(graph.ceiling))
    has = count >= k
    kth[has] = dist[start[has] + k - 1]
    return kth


def _eps_at(kth: np.ndarray, ceiling: float, quantile: float) -> float:
    below = kth[kth < ceiling]
    if below.size == 0:
        return 0.0
    return float(min(np.quantile(kth, quantile, method="lower"), below.max()))


def most_clusters_eps(graph: clustering.RadiusGraph, min_samples: int,
                      quantiles: tuple[float, ...] = EPS_GRID) -> tuple[float, float]:
    """(eps, its quantile): of the radii `neighbour_eps` gives at `quantiles`, the one at which DBSCAN finds
    the most clusters (ties: the largest radius, which clusters the most tracklets).

    Why: as the radius grows, clusters first multiply (tracklets pair up) and then merge; past the peak
    each merge joins two groups that were apart, and in a target where a person is filmed a few times
    those are mostly two people (single linkage chains them, min_samples 2). The peak is where joining
    stops outpacing chaining, read from the target's own distances: no identity count, no labels.
    graph: as for neighbour_eps (radius ≥ every k-distance, e.g. jaccard_graph(radius=1)).
    """
    kth = _k_distances(graph, min_samples)  # sorted once, read at every quantile
    best = None
    for quantile in quantiles:
        eps = _eps_at(kth, float(graph.ceiling), quantile)
        labels = clustering.dbscan(restrict(graph, eps), eps, min_samples)
        found = len(np.unique(labels[labels >= 0]))
        if best is None or (found, eps) >= best[:2]:  # ties go to the larger radius, whatever the order given
            best = (found, eps, float(quantile))
    return best[1], best[2]


def restrict(graph: clustering.RadiusGraph, radius: float) -> clustering.RadiusGraph:
    """The same graph with only the pairs within `radius` (≤ graph.radius)."""
    near = graph.distance <= radius
    return clustering.RadiusGraph(graph.num_points, graph.first[near], graph.second[near], graph.distance[near],
                                  float(radius), graph.ceiling)


def cluster_features(config, features: np.ndarray, camids: np.ndarray, epoch: int,
                     report: dict | None = None) -> np.ndarray:
    """Pseudo-identities int32 [N] (−1 = outlier) of target features [N, D]; deterministic in
    (features, config.seed, epoch). `report`, when given, receives the settings used (k1, k2, eps, …)."""
    p = config.plus
    report = {} if report is None else report
    if p.camera_normalise:
        # In the demo each camera paints its own scene; without this the clusters form around cameras
        # rather than people. Normalised before (equal weight per tracklet in its camera's mean) and after.
        f = ops.camera_centred(features, camids, dtype=np.float32, normalise_before=True, normalise_after=True)
    else:
        f = ops.l2_normalise(np.asarray(features, np.float32))
    if p.clustering == "kmeans":
        clusters = int(p.kmeans_clusters)
        if clusters <= 0:  # the rule: as many as DBSCAN finds on the same features
            found = _dbscan(config, f, camids, report)
            clusters = max(1, min(len(np.unique(found[found >= 0])), p.max_clusters, f.shape[0]))
        report["kmeans_clusters"] = clusters
        # Seeded with distinct random points, not k-means++: its seeding costs O(N·K²·D) here (too slow
        # at MARS size with K = 500 on a CPU host), and whole-set clusters need no per-batch care.
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed), epoch)
        points = jnp.asarray(f)
        start = points[jax.random.permutation(key, points.shape[0])[:clusters]]
        centroids = clustering.lloyd_iterations(points, start, p.kmeans_iters)
        return np.asarray(jnp.argmin(clustering.squared_distances(points, centroids), axis=1), np.int32)
    return _dbscan(config, f, camids, report)


def _dbscan(config, f: np.ndarray, camids: np.ndarray, report: dict) -> np.ndarray:
    p = config.plus
    settings = clustering_settings(config, camids)
    delta = max(p.reliable_delta, 0.0)
    if p.eps > 0:
        eps = float(p.eps)
        graph = kreciprocal.jaccard_graph(f, k1=settings["k1"], k2=settings["k2"], radius=eps + delta)
    else:
        everything = kreciprocal.jaccard_graph(f, k1=settings["k1"], k2=settings["k2"], radius=1.0)
        if p.eps_rule == "most_clusters":
            eps, quantile = most_clusters_eps(everything, settings["min_samples"])
            report["eps_quantile"] = quantile
        else:
            eps = neighbour_eps(everything, settings["min_samples"], p.eps_quantile)
        graph = restrict(everything, min(eps + delta, 1.0))
    report.update(settings, eps=eps)
    if p.reliable_delta > 0:
        return clustering.reliable_dbscan(graph, eps, settings["min_samples"], p.reliable_delta, p.reliable_min_iou)
    return clustering.dbscan(graph, eps, settings["min_samples"])


def fill_memory(features: np.ndarray, labels: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels int32 [N], memory float32 [capacity, D], valid bool [capacity]) from pseudo-identities.

    Slot c holds the normalised mean of cluster c's L2-normalised features. With more clusters than
    slots the largest are kept (ties: the lower cluster id) and the rest become outliers; clusters are
    renumbered 0.. in their original order so the result does not depend on anything but the input.
    """
    f = ops.l2_normalise(np.asarray(features, np.float32))
    labels = np.asarray(labels, np.int32)
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    keep = np.sort(ids[np.argsort(-counts, kind="stable")[:capacity]])
    renumber = np.full(int(labels.max(initial=-1)) + 2, -1, np.int32)
    renumber[keep] = np.arange(keep.size, dtype=np.int32)
    new_labels = np.where(labels >= 0, renumber[labels], -1).astype(np.int32)
    valid = np.arange(capacity) < keep.size
    return new_labels, _slot_means(f, new_labels, capacity), valid


def _slot_means(f: np.ndarray, slots: np.ndarray, capacity: int) -> np.ndarray:
    """float32 [capacity, D]: slot s the normalised sum of the rows of normalised features f with slots == s
    (zero for an empty slot; rows with slot −1 count nowhere)."""
    memory = np.zeros((capacity, f.shape[1]), np.float32)
    np.add.at(memory, slots[slots >= 0], f[slots >= 0])
    return ops.l2_normalise(memory).astype(np.float32)


def fill_proxy_memory(features: np.ndarray, labels: np.ndarray, camids: np.ndarray,
                      capacity: int) -> dict[str, np.ndarray]:
    """Camera-aware proxies (CAP) from pseudo-identities: one slot per (pseudo-identity, camera) pair.

    features [N, D], labels int32 [N] (−1 outlier), camids int [N]. Returns {'labels': int32 [N], each
    tracklet's proxy slot (−1 outlier), 'memory': float32 [capacity, D], each slot the normalised mean of
    its tracklets' normalised features, 'valid': bool [capacity], 'slot_cluster': int32 [capacity], the
    pseudo-identity of each slot (renumbered 0..), 'slot_camera': int32 [capacity]} (−1 for empty slots).
    With more proxies than slots, whole pseudo-identities are kept, largest first (ties: the lower id),
    while their proxies fit; the rest become outliers. Slots are ordered by (pseudo-identity id, camera).
    """
    f = ops.l2_normalise(np.asarray(features, np.float32))
    labels, camids = np.asarray(labels, np.int32), np.asarray(camids, np.int64)
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    cameras_of = {int(i): np.unique(camids[labels == i]) for i in ids}
    kept, used = [], 0
    for i in ids[np.argsort(-counts, kind="stable")]:
        if used + cameras_of[int(i)].size <= capacity:
            kept.append(int(i))
            used += cameras_of[int(i)].size
    out_labels = np.full(labels.shape, -1, np.int32)
    slot_cluster = np.full(capacity, -1, np.int32)
    slot_camera = np.full(capacity, -1, np.int32)
    slot = 0
    for new_id, i in enumerate(sorted(kept)):
        for cam in cameras_of[i]:
            out_labels[(labels == i) & (camids == cam)] = slot
            slot_cluster[slot], slot_camera[slot] = new_id, cam
            slot += 1
    return {"labels": out_labels, "memory": _slot_means(f, out_labels, capacity), "valid": slot_cluster >= 0,
            "slot_cluster": slot_cluster, "slot_camera": slot_camera}


def outliers_as_instances(labels: np.ndarray) -> np.ndarray:
    """int32 [N]: the clusters as they are, and each outlier (−1) a cluster of its own, numbered after the
    largest id in index order (SpCL keeps un-clustered instances in its memory rather than dropping them)."""
    labels = np.asarray(labels, np.int32).copy()
    outliers = np.flatnonzero(labels < 0)
    labels[outliers] = labels.max(initial=-1) + 1 + np.arange(outliers.size, dtype=np.int32)
    return labels


def reads_target_labels(config) -> bool:
    """plus.true_identities, the diagnostic that needs the target training labels."""
    return bool(config.plus.true_identities)


def epoch_start(config, state, extract: Callable[..., np.ndarray], camids: np.ndarray,
                epoch: int, identities: np.ndarray | None = None) -> tuple[Any, dict[str, float]]:
    """Re-cluster the target training set before `epoch` (0-based): state with a new TrainState.variant_state,
    and stats to log ({'clusters', 'outliers' (fraction)}).

    extract(variables, temporal=None) -> float32 [N_target_train, D]: eval-mode features (the loop's evaluation
    pipeline; plus.cluster_temporal, when set, is passed as `temporal`); the teacher's variables are used.
    Before plus.start_epoch the memory stays empty; at it the divergence guard's history is emptied
    (divergence.forget_history). The state is taken and returned as the loop
    holds it replicated; the new arrays are plain host values. identities int [N_target_train]: the true
    labels, given (and read) only with the diagnostic plus.true_identities, where they replace the clustering.
    """
    p = config.plus
    if epoch < p.start_epoch:
        return state, {}
    if epoch == p.start_epoch:
        # The memory terms join the loss from here: the guard learns the new loss's scale afresh. Only at
        # this epoch, so a run resumed at any epoch boundary does what the uninterrupted one did.
        state = divergence.forget_history(state)
    # Only a set plus.cluster_temporal is passed on, so an extract that knows one way to cut clips still serves.
    clips = {"temporal": p.cluster_temporal} if p.cluster_temporal else {}
    features = extract({"params": state.ema_params, "batch_stats": state.ema_batch_stats}, **clips)
    settings: dict = {}
    if p.true_identities:
        if identities is None or len(identities) != len(features):
            raise ValueError("config.plus.true_identities=True needs the target training labels (identities=), one per "
                             f"tracklet: got {None if identities is None else len(identities)} for {len(features)}")
        identities = np.asarray(identities)
        raw = np.full(identities.shape, -1, np.int32)  # a negative label (junk) is an outlier, as in the protocols
        known = identities >= 0
        raw[known] = np.unique(identities[known], return_inverse=True)[1].reshape(-1)
    else:
        raw = cluster_features(config, features, np.asarray(camids), epoch, report=settings)
        if p.outlier_instances:
            raw = outliers_as_instances(raw)
    found = len(np.unique(raw[raw >= 0]))
    if p.camera_proxies:
        memory_state = fill_proxy_memory(features, raw, camids, p.max_clusters)
        clusters = len(np.unique(memory_state["slot_cluster"][memory_state["valid"]]))
        stats = {"clusters": float(clusters), "proxies": float(memory_state["valid"].sum())}
    else:
        labels, memory, valid = fill_memory(features, raw, p.max_clusters)
        memory_state = {"labels": labels, "memory": memory, "valid": valid}
        clusters = int(valid.sum())
        stats = {"clusters": float(clusters)}
    stats.update(outliers=float(np.mean(memory_state["labels"] < 0)), dropped_clusters=float(found - clusters),
                 **{key: float(value) for key, value in settings.items()})
    return state.replace(variant_state=memory_state), stats


def make_train_step(model, config, axis_name: str | None = None):
    """The paper step (its source and target terms as configured) with the memory update after it."""
    momentum = config.plus.memory_momentum

    def update(extra, kept):
        if "cluster_labels" not in kept:
            return extra
        return {**extra, "memory": losses.memory_update(extra["memory"], kept["cluster_features"],
                                                        kept["cluster_labels"], momentum)}

    return paper.make_train_step(model, config, axis_name, after_update=update)
