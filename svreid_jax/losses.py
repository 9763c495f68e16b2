"""Every loss as a pure function of arrays. Shapes: B clips, D embedding size, K classes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy. logits [..., K] float, labels [...] int. The reference uses no smoothing."""
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    # A zero row maps to zero with a zero gradient; ‖x‖'s own gradient there is 0/0 = NaN, so zero
    # rows are swapped for ones before the norm (the "double where") and put back after.
    nonzero = jnp.any(x != 0, axis=-1, keepdims=True)
    safe = jnp.where(nonzero, x, jnp.ones_like(x))
    return jnp.where(nonzero, safe / jnp.maximum(jnp.linalg.norm(safe, axis=-1, keepdims=True), eps), 0.0)


def pairwise_distances(x: jax.Array, metric: str = "cosine") -> jax.Array:
    """[B, D] → [B, B]. cosine: −cos(x_i, x_j) (the reference's triplet distance); euclidean: ‖x_i − x_j‖."""
    x = x.astype(jnp.float32)
    if metric == "cosine":
        xn = _l2_normalize(x)
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


def _squared_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
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
        d2 = _squared_distances(points, centroids)
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
        assign = jnp.argmin(_squared_distances(points, centroids), axis=1)
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
    assign = jnp.argmin(_squared_distances(points, centroids), axis=1).astype(jnp.int32)
    return centroids, assign


def centre_by_group(x: jax.Array, groups: jax.Array) -> jax.Array:
    """x [B, D] minus the mean of the rows that share its group id (groups int [B]), L2-normalised.

    A row alone in its group keeps its value: its own mean would zero it.
    """
    same = (groups[:, None] == groups[None, :]).astype(x.dtype)
    count = jnp.sum(same, axis=1, keepdims=True)
    return _l2_normalize(jnp.where(count > 1, x - (same @ x) / count, x))


def teacher_consistency(rng: jax.Array, student: jax.Array, teacher: jax.Array, *, num_clusters: int,
                        num_iters: int = 10, temperature: float = 0.1,
                        groups: jax.Array | None = None) -> dict[str, jax.Array]:
    """Mean-teacher identification consistency on a target batch (the paper variant; both terms differentiable).

    student, teacher: [B, D] clip embeddings of the same target clips; both are L2-normalised here,
    after subtracting their group's batch mean when `groups` (int [B], e.g. camera ids) is given.
    The teacher's embeddings are clustered (k-means, no gradient); then
      L^C_1 = cross-entropy of the student's soft assignment softmax(cos(s, c_j) / temperature)
              against the teacher's hard cluster of the same clip;
      L^C_2 = mean Euclidean distance of each student embedding to its teacher-assigned centroid.
    Returns {'consistency_ce': L^C_1, 'consistency_dist': L^C_2}.
    """
    student, teacher = student.astype(jnp.float32), jax.lax.stop_gradient(teacher.astype(jnp.float32))
    if groups is None:
        s, t = _l2_normalize(student), _l2_normalize(teacher)
    else:
        # Camera-centred clustering: whatever a camera adds to everyone it films (scene, colour cast)
        # is removed first, so clusters cannot form around cameras instead of people.
        s, t = centre_by_group(student, groups), centre_by_group(teacher, groups)
    centroids, assign = kmeans(rng, t, num_clusters, num_iters)
    centroids = jax.lax.stop_gradient(centroids)
    logits = (s @ _l2_normalize(centroids).T) / temperature
    ce = cross_entropy(logits, assign)
    dist = jnp.mean(jnp.sqrt(jnp.sum((s - centroids[assign]) ** 2, axis=-1) + 1e-12))
    return {"consistency_ce": ce, "consistency_dist": dist}


def temporal_infonce(projection: jax.Array, num_instances: int, temperature: float = 0.07) -> jax.Array:
    """SINet's temporal InfoNCE over groups of K same-identity clips (method-spec §4.3).

    projection: [B, T, D] projected frame features; consecutive runs of `num_instances` clips share a
    pid (the P×K sampler guarantees it). Within a group, frame (t, k) has as positives the same time
    step t of the other K−1 clips, and as negatives every entry at another time step (its own
    clip's other frames included). Per (anchor, positive): s_pos − log(Σ_neg e^s + e^s_pos), with
    s = cosine / temperature; the loss is minus the mean over all such pairs.
    """
    b, t, d = projection.shape
    if b % num_instances:
        raise ValueError(f"batch {b} is not made of whole groups of {num_instances} clips")
    z = _l2_normalize(projection.astype(jnp.float32)).reshape(b // num_instances, num_instances * t, d)
    sim = jnp.einsum("gnd,gmd->gnm", z, z) / temperature  # [G, N, N], entry n = (k, t) → k·T + t
    time = jnp.tile(jnp.arange(t), num_instances)
    clip = jnp.repeat(jnp.arange(num_instances), t)
    positive = (time[:, None] == time[None, :]) & (clip[:, None] != clip[None, :])
    negative = time[:, None] != time[None, :]
    neg_lse = jax.nn.logsumexp(jnp.where(negative, sim, -jnp.inf), axis=-1, keepdims=True)  # [G, N, 1]
    per_pair = sim - jnp.logaddexp(neg_lse, sim)
    return -jnp.sum(jnp.where(positive, per_pair, 0.0)) / (positive.sum() * sim.shape[0])
