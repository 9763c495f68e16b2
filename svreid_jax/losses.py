"""Every loss as a pure function of arrays. Shapes: B clips, D embedding size, K classes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from svreid_jax import clustering, ops


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy. logits [..., K] float, labels [...] int. The reference uses no smoothing."""
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


def pairwise_distances(x: jax.Array, metric: str = "cosine") -> jax.Array:
    """[B, D] → [B, B]. cosine: −cos(x_i, x_j) (the reference's triplet distance); euclidean: ‖x_i − x_j‖."""
    x = x.astype(jnp.float32)
    if metric == "cosine":
        xn = ops.l2_normalise(x, zero_safe=True)
        return -xn @ xn.T
    if metric == "euclidean":
        sq = jnp.sum(x * x, axis=-1)
        d2 = sq[:, None] + sq[None, :] - 2.0 * x @ x.T
        # The clamp keeps sqrt's gradient finite on the diagonal.
        return jnp.sqrt(jnp.maximum(d2, 1e-12))
    raise ValueError(f"unknown distance metric {metric!r}; expected 'cosine' or 'euclidean'")


def batch_hard_triplet(embeddings: jax.Array, labels: jax.Array, margin: float = 0.3,
                       metric: str = "cosine") -> jax.Array:
    """Batch-hard triplet loss: mean_i max(0, max_{same pid} d − min_{other pid} d + margin).

    embeddings [B, D], labels [B] int. The positive max includes the anchor itself (distance −1 for
    cosine, 0 for euclidean), which never beats a real positive, as in the reference.
    """
    dist = pairwise_distances(embeddings, metric)
    same = labels[:, None] == labels[None, :]
    hardest_positive = jnp.max(jnp.where(same, dist, -jnp.inf), axis=1)
    hardest_negative = jnp.min(jnp.where(same, jnp.inf, dist), axis=1)
    # A batch without any negative for an anchor contributes 0 rather than inf.
    hardest_negative = jnp.where(jnp.isinf(hardest_negative), hardest_positive + margin, hardest_negative)
    return jnp.mean(jax.nn.relu(hardest_positive - hardest_negative + margin))


def domain_cross_entropy(source_logits: jax.Array, target_logits: jax.Array) -> jax.Array:
    """Discriminator loss with domain labels source = 0, target = 1, averaged over all items.

    source_logits [..., 2], target_logits [..., 2] with any leading shape (frames or clips).
    """
    s = source_logits.reshape(-1, source_logits.shape[-1])
    t = target_logits.reshape(-1, target_logits.shape[-1])
    logits = jnp.concatenate([s, t])
    labels = jnp.concatenate([jnp.zeros(len(s), jnp.int32), jnp.ones(len(t), jnp.int32)])
    return cross_entropy(logits, labels)


def domain_accuracy(source_logits: jax.Array, target_logits: jax.Array) -> jax.Array:
    """Fraction of items whose domain the discriminator gets right (0.5 = fully confused)."""
    s = jnp.argmax(source_logits, -1) == 0
    t = jnp.argmax(target_logits, -1) == 1
    return (jnp.sum(s) + jnp.sum(t)) / (s.size + t.size)


def camera_alignment(x: jax.Array, cameras: jax.Array) -> jax.Array:
    """Share of the target batch's embedding variance that lies between its cameras (label-free).

    x: [B, D] clip embeddings (L2-normalised here); cameras: int [B] camera ids. With μ_c the mean of
    camera c's rows and μ the batch mean,
      between = mean_i ‖μ_{c(i)} − μ‖²,   total = mean_i ‖x_i − μ‖²,   loss = between / total ∈ [0, 1].
    0 when every camera's rows have the batch mean, 1 when each camera's rows sit at one point. A ratio,
    not the between-camera scatter alone, so the step cannot lower it by shrinking the target
    embeddings together (docs/METHOD.md §4.5).
    """
    x = ops.l2_normalise(x.astype(jnp.float32), zero_safe=True)
    same = (cameras[:, None] == cameras[None, :]).astype(x.dtype)
    camera_mean = (same @ x) / jnp.sum(same, axis=1, keepdims=True)
    batch_mean = jnp.mean(x, axis=0, keepdims=True)
    between = jnp.mean(jnp.sum(jnp.square(camera_mean - batch_mean), axis=-1))
    total = jnp.mean(jnp.sum(jnp.square(x - batch_mean), axis=-1))
    return between / (total + 1e-6)


def teacher_consistency(rng: jax.Array, student: jax.Array, teacher: jax.Array, *, num_clusters: int,
                        num_iters: int = 10, temperature: float = 0.1,
                        groups: jax.Array | None = None) -> dict[str, jax.Array]:
    """Mean-teacher identification consistency on a target batch (the paper variant; both terms differentiable).

    student, teacher: [B, D] clip embeddings of the same target clips; both are L2-normalised here,
    after subtracting their group's batch mean when `groups` (int [B], e.g. camera ids) is given.
    The teacher's embeddings are clustered (k-means, no gradient); each teacher vector's cluster is the
    centroid of largest cosine, a_i = argmax_j cos(t_i, c_j), the geometry the student is scored in; then
      L^C_1 = cross-entropy of the student's soft assignment softmax(cos(s, c_j) / temperature)
              against the teacher's cluster a_i of the same clip;
      L^C_2 = mean Euclidean distance of each student embedding to the centroid c_{a_i}.
    With student = teacher the student's most likely cluster is the teacher's for every clip.
    Returns {'consistency_ce': L^C_1, 'consistency_dist': L^C_2}.
    """
    student, teacher = student.astype(jnp.float32), jax.lax.stop_gradient(teacher.astype(jnp.float32))
    if groups is None:
        s, t = ops.l2_normalise(student, zero_safe=True), ops.l2_normalise(teacher, zero_safe=True)
    else:
        # Camera-centred clustering: whatever a camera adds to everyone it films (scene, colour cast)
        # is removed first, so clusters cannot form around cameras instead of people.
        s = ops.camera_centred(student, groups, keep_singletons=True, normalise_after=True)
        t = ops.camera_centred(teacher, groups, keep_singletons=True, normalise_after=True)
    centroids, _ = clustering.kmeans(rng, t, num_clusters, num_iters)
    centroids = jax.lax.stop_gradient(centroids)
    directions = ops.l2_normalise(centroids, zero_safe=True)
    # k-means' own labels (nearest un-normalised centroid) differ from the cosine ranking for a few
    # clips (their centroids have unequal norms); labelling by cosine makes the teacher's label the
    # student's argmax when they agree (docs/METHOD.md §4.5).
    assign = jnp.argmax(t @ directions.T, axis=-1)
    logits = (s @ directions.T) / temperature
    ce = cross_entropy(logits, assign)
    dist = jnp.mean(jnp.sqrt(jnp.sum((s - centroids[assign]) ** 2, axis=-1) + 1e-12))
    return {"consistency_ce": ce, "consistency_dist": dist}


def temporal_infonce(projection: jax.Array, num_instances: int, temperature: float = 0.07, *,
                     sum_groups: bool = False) -> jax.Array:
    """SINet's temporal InfoNCE over groups of K same-identity clips (docs/METHOD.md §4.3).

    projection: [B, T, D] projected frame features; consecutive runs of `num_instances` clips share a
    pid (the P×K sampler guarantees it). Within a group, frame (t, k) has as positives the same time
    step t of the other K−1 clips, and as negatives every entry at another time step (its own
    clip's other frames included). Per (anchor, positive): s_pos − log(Σ_neg e^s + e^s_pos), with
    s = cosine / temperature. Returns a scalar in nats:
      sum_groups=False: minus the mean over all G·K·T·(K−1) pairs of the batch (G = B/K groups);
      sum_groups=True: minus the sum over all pairs divided by one group's pair count K·T·(K−1), i.e.
        G × the mean, as the authors' code normalises it (docs/METHOD.md §4.3).
    """
    b, t, d = projection.shape
    if num_instances < 2:
        raise ValueError(f"temporal InfoNCE needs at least 2 clips per identity for positives, got {num_instances}")
    if b % num_instances:
        raise ValueError(f"batch {b} is not made of whole groups of {num_instances} clips")
    z = ops.l2_normalise(projection.astype(jnp.float32), zero_safe=True)
    z = z.reshape(b // num_instances, num_instances * t, d)
    sim = jnp.einsum("gnd,gmd->gnm", z, z) / temperature  # [G, N, N], entry n = (k, t) → k·T + t
    time = jnp.tile(jnp.arange(t), num_instances)
    clip = jnp.repeat(jnp.arange(num_instances), t)
    positive = (time[:, None] == time[None, :]) & (clip[:, None] != clip[None, :])
    negative = time[:, None] != time[None, :]
    neg_lse = jax.nn.logsumexp(jnp.where(negative, sim, -jnp.inf), axis=-1, keepdims=True)  # [G, N, 1]
    per_pair = sim - jnp.logaddexp(neg_lse, sim)
    pairs = positive.sum() if sum_groups else positive.sum() * sim.shape[0]
    return -jnp.sum(jnp.where(positive, per_pair, 0.0)) / pairs


# ---------------------------------------------------------------------------------------------
# Reference variant (the authors' code, docs/METHOD.md §4.6–§4.9)


def tmse(logits: jax.Array, tau: float = 4.0) -> jax.Array:
    """MS-TCN's truncated MSE between the log-probabilities of consecutive frames (docs/METHOD.md §4.7).

    logits [B, T, K] (one stage) → scalar: mean over (b, t ≥ 1, k) of
    clamp((log p_t − sg[log p_{t−1}])², 0, τ²). Only the later frame of each pair gets a gradient,
    as in the reference (it detaches the earlier one). T = 1 gives 0.
    """
    if logits.shape[1] < 2:
        return jnp.zeros((), jnp.float32)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    diff = logp[:, 1:] - jax.lax.stop_gradient(logp[:, :-1])
    return jnp.mean(jnp.clip(jnp.square(diff), 0.0, tau * tau))


def _entropy(logits: jax.Array) -> jax.Array:
    """Shannon entropy (nats) of softmax(logits) over the last axis: [..., K] → [...]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def attentive_entropy(class_logits: jax.Array, domain_logits: jax.Array) -> jax.Array:
    """SSTDA's attentive entropy (docs/METHOD.md §4.8): mean_j (1 + H(domain_j)) · H(class_j).

    class_logits [..., K], domain_logits [..., 2] with the same leading shape (frames). The weight
    1 + H(domain) is NOT detached, as in the reference, so the domain discriminator gets a gradient too.
    """
    if class_logits.shape[:-1] != domain_logits.shape[:-1]:
        raise ValueError(f"attentive_entropy: class logits {class_logits.shape} and domain logits "
                         f"{domain_logits.shape} must share their leading shape")
    return jnp.mean((1.0 + _entropy(domain_logits)) * _entropy(class_logits))


def frame_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-frame CE of one stage: logits [B, T, K], clip labels [B] (every frame gets its clip's pid)."""
    per_frame = jnp.broadcast_to(labels[:, None], logits.shape[:2])
    return cross_entropy(logits, per_frame)


def host_kmeans_consistency(student: np.ndarray, teacher: np.ndarray, seed: int, *, num_clusters: int = 16,
                            n_init: int = 10, max_iter: int = 300, mismatch_weight: float = 10.0) -> np.ndarray:
    """The reference's group-label consistency constant (docs/METHOD.md §4.9), on the host.

    student, teacher: [B, D] clip embeddings of the same target clips. k-means on the 2B stacked
    vectors; L_01 = fraction of clips whose student and teacher vectors fall in different clusters;
    L_dist = mean Euclidean distance of the 2B vectors to their centre. Returns float32
    [L_cons, L_01, L_dist] with L_cons = mismatch_weight · L_01 + L_dist. No gradient: it is a
    number computed from arrays (the reference moves them to numpy).
    """
    s = np.asarray(student, np.float64)
    t = np.asarray(teacher, np.float64)
    if s.shape != t.shape or s.ndim != 2:
        raise ValueError(f"host_kmeans_consistency: student {s.shape} and teacher {t.shape} must both be [B, D]")
    b = s.shape[0]
    x = np.concatenate([s, t])
    centres, labels, _ = clustering.kmeans_numpy(x, num_clusters, n_init=n_init, max_iter=max_iter,
                                      rng=np.random.default_rng(int(seed)))
    mismatch = float(np.mean(labels[:b] != labels[b:]))
    dist = float(np.mean(np.linalg.norm(x - centres[labels], axis=1)))
    return np.asarray([mismatch_weight * mismatch + dist, mismatch, dist], np.float32)


# ---------------------------------------------------------------------------------------------
# Cluster memory (the `plus` variant, docs/METHOD.md "plus"): M slots of L2-normalised cluster
# centroids, `valid` [M] bool marks the slots holding a cluster this epoch.

_MASKED = -1e9  # logit of an empty slot: finite, so an all-empty memory gives no NaN


def _memory_logits(features: jax.Array, memory: jax.Array, valid: jax.Array, temperature: float) -> jax.Array:
    logits = ops.l2_normalise(features.astype(jnp.float32), zero_safe=True) @ memory.T / temperature
    return jnp.where(valid[None, :], logits, _MASKED)


def cluster_contrast(features: jax.Array, labels: jax.Array, memory: jax.Array, valid: jax.Array,
                     temperature: float = 0.05) -> tuple[jax.Array, jax.Array]:
    """Cluster-level InfoNCE: −log softmax(memory · f / τ)[y] over the valid slots, averaged over the
    items with a pseudo-label.

    features [B, D] (normalised here), labels int32 [B] (−1: outlier, left out), memory [M, D],
    valid bool [M]. Returns (loss, fraction of items with a label); 0 when none has one.
    """
    logits = _memory_logits(features, memory, valid, temperature)
    return _labelled_nll(logits, labels), jnp.sum(labels >= 0) / labels.shape[0]


def _labelled_nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """−log softmax(logits)[y] averaged over the items with a label y ≥ 0 (0 when none has one)."""
    labelled = labels >= 0
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), jnp.maximum(labels, 0)[:, None], -1)[:, 0]
    return jnp.sum(jnp.where(labelled, nll, 0.0)) / jnp.maximum(jnp.sum(labelled), 1)


def memory_soft_cross_entropy(student: jax.Array, teacher: jax.Array, memory: jax.Array, valid: jax.Array,
                              temperature: float = 0.05, slot_groups: jax.Array | None = None) -> jax.Array:
    """MMT-style soft pseudo-labels: −Σ_g P_T(g) log P_S(g), averaged over the B items; 0 with an empty memory.

    p = softmax(memory · f / τ) over the valid slots, p_T from the teacher's embeddings (no gradient).
    Without slot_groups each slot is its own class, P = p. With slot_groups (int32 [M], the group of each
    slot, e.g. the pseudo-identity of a camera-aware proxy; −1 for empty slots) the classes are the groups:
    P(g) = Σ_{slots m of g} p(m), computed as a log-sum-exp per group.

    student, teacher [B, D]; memory [M, D]; valid bool [M].
    """
    t_logits = jax.lax.stop_gradient(_memory_logits(teacher, memory, valid, temperature))
    log_p_teacher = jax.nn.log_softmax(t_logits, -1)
    log_p_student = jax.nn.log_softmax(_memory_logits(student, memory, valid, temperature), -1)
    if slot_groups is None:
        p_teacher, log_p, present = jnp.exp(log_p_teacher), log_p_student, valid
    else:
        groups = jnp.where(valid, slot_groups, -1)
        num = memory.shape[0]  # at most one group per slot
        present = jax.ops.segment_sum(valid.astype(jnp.int32), jnp.maximum(groups, 0), num) > 0
        p_teacher = jnp.exp(_group_logsumexp(log_p_teacher, groups, num))
        log_p = _group_logsumexp(log_p_student, groups, num)
    per_item = -jnp.sum(jnp.where(present[None, :], p_teacher * log_p, 0.0), -1)
    return jnp.where(jnp.any(valid), jnp.mean(per_item), 0.0)


def _group_logsumexp(log_p: jax.Array, groups: jax.Array, num_groups: int) -> jax.Array:
    """log Σ_{m: groups[m] = g} exp(log_p[:, m]) for g < num_groups: [B, num_groups], in O(B·M) memory;
    slots with group −1 count nowhere, and an empty group gives the masked logit (probability 0)."""
    ids = jnp.where(groups >= 0, groups, num_groups)  # out of range: dropped by the segment sums
    columns = log_p.T  # [M, B]
    peak = jax.lax.stop_gradient(jax.ops.segment_max(columns, ids, num_groups))  # [G, B], −inf when empty
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
    shifted = jnp.exp(columns - peak[jnp.minimum(ids, num_groups - 1)])
    summed = jax.ops.segment_sum(jnp.where((ids < num_groups)[:, None], shifted, 0.0), ids, num_groups)  # [G, B]
    safe = jnp.where(summed > 0, summed, 1.0)
    return jnp.where(summed > 0, peak + jnp.log(safe), _MASKED).T


def intra_camera_contrast(features: jax.Array, labels: jax.Array, memory: jax.Array, valid: jax.Array,
                          slot_camera: jax.Array, temperature: float = 0.05) -> jax.Array:
    """Camera-aware proxies, within a camera (CAP): −log softmax(memory · f / τ)[y] over the valid slots of
    y's own camera only, averaged over the items with a pseudo-label (0 when none has one).

    Every candidate shares the clip's camera, so the loss cannot be lowered by coding the camera: it
    separates the people that one camera saw. features [B, D] (normalised here); labels int32 [B]
    (a proxy slot, −1: outlier); memory [M, D]; valid bool [M]; slot_camera int32 [M].
    """
    logits = _memory_logits(features, memory, valid, temperature)
    own_camera = slot_camera[jnp.maximum(labels, 0)]
    return _labelled_nll(jnp.where(slot_camera[None, :] == own_camera[:, None], logits, _MASKED), labels)


def inter_camera_contrast(features: jax.Array, labels: jax.Array, memory: jax.Array, valid: jax.Array,
                          slot_cluster: jax.Array, temperature: float = 0.05, hard_negatives: int = 50,
                          other_cameras_only: bool = False) -> jax.Array:
    """Camera-aware proxies, across cameras (CAP): every proxy of the clip's pseudo-identity, in whichever
    camera, is a positive against the `hard_negatives` most similar proxies of other pseudo-identities:

        L_i = −(1/|P_i|) Σ_{p ∈ P_i} log( e^{s_p} / (Σ_{q ∈ P_i} e^{s_q} + Σ_{n ∈ N_i} e^{s_n}) ),  s = memory · f_i / τ,

    averaged over the items with a pseudo-label (0 when none has one). It pulls a clip towards how its
    person looks in the other cameras, which is what removes the camera from the embedding.

    With other_cameras_only the clip's own proxy (its slot y_i: its pseudo-identity in its own camera) is
    left out, as positive and as negative: P_i holds only the proxies of its pseudo-identity in other
    cameras, and a clip whose pseudo-identity one camera saw alone has none and counts nowhere. Otherwise
    a proxy that lies near the clip because both share a camera is pulled on like the others, and a
    pseudo-identity of one camera pulls its clips towards that camera (docs/METHOD.md §1.4).
    features [B, D]; labels int32 [B] (a proxy slot, −1: outlier); memory [M, D]; valid bool [M];
    slot_cluster int32 [M] (the pseudo-identity of each slot). hard_negatives ≤ M.
    """
    logits = _memory_logits(features, memory, valid, temperature)
    own = jnp.maximum(labels, 0)
    cluster = slot_cluster[own]
    positive = (slot_cluster[None, :] == cluster[:, None]) & valid[None, :]
    if other_cameras_only:
        own_camera_proxy = jnp.arange(memory.shape[0])[None, :] == own[:, None]
        logits = jnp.where(own_camera_proxy, _MASKED, logits)
        positive = positive & ~own_camera_proxy
        labels = jnp.where(jnp.any(positive, -1), labels, -1)
    negatives, _ = jax.lax.top_k(jnp.where(positive, _MASKED, logits), hard_negatives)
    # A masked candidate's exp underflows to 0, so missing negatives (fewer than asked) count for nothing.
    log_denominator = jax.nn.logsumexp(jnp.concatenate([jnp.where(positive, logits, _MASKED), negatives], -1), -1)
    per_item = -jnp.sum(jnp.where(positive, logits - log_denominator[:, None], 0.0), -1) / jnp.maximum(
        jnp.sum(positive, -1), 1)
    labelled = labels >= 0
    return jnp.sum(jnp.where(labelled, per_item, 0.0)) / jnp.maximum(jnp.sum(labelled), 1)


def memory_update(memory: jax.Array, features: jax.Array, labels: jax.Array, momentum: float) -> jax.Array:
    """m_y ← normalise(μ m_y + (1 − μ) f) for each item in batch order (Cluster-Contrast's update: later
    items of a cluster see the earlier ones' update); outliers (y < 0) change nothing.

    memory [M, D]; features [B, D] (normalised here, no gradient); labels int32 [B].
    """
    f = ops.l2_normalise(jax.lax.stop_gradient(features).astype(jnp.float32), zero_safe=True)
    labels = jnp.asarray(labels)

    def one(i, mem):
        y = labels[i]
        slot = jnp.maximum(y, 0)
        moved = ops.l2_normalise(momentum * mem[slot] + (1.0 - momentum) * f[i], zero_safe=True)
        return mem.at[slot].set(jnp.where(y >= 0, moved, mem[slot]))

    return jax.lax.fori_loop(0, labels.shape[0], one, memory)


