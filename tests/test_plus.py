"""The plus variant's pieces: DBSCAN, the all-pairs Jaccard distances, the memory fill, the memory terms and
update against numpy, and the step's memory under a named axis (what pmap runs) against jit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo, mars
from svreid_jax import clustering, kreciprocal, losses, ops, variants
from svreid_jax.evaluation import rerank
from svreid_jax.models import reid
from svreid_jax.state import create_train_state
from svreid_jax.variants import divergence, plus, terms


def _dbscan_brute_force(d, eps, min_samples):
    """Textbook DBSCAN by flood fill from each unvisited core point in index order, border points
    given to their nearest core point (the rule of clustering.dbscan, which sklearn leaves to visit order)."""
    n = len(d)
    near = d <= eps
    core = [near[i].sum() >= min_samples for i in range(n)]
    labels = [-1] * n
    next_id = 0
    for start in range(n):
        if not core[start] or labels[start] >= 0:
            continue
        stack = [start]
        labels[start] = next_id
        while stack:
            i = stack.pop()
            for j in range(n):
                if near[i, j] and core[j] and labels[j] < 0:
                    labels[j] = next_id
                    stack.append(j)
        next_id += 1
    for i in range(n):
        if not core[i]:
            cands = [(d[i, j], j) for j in range(n) if core[j] and near[i, j]]
            if cands:
                labels[i] = labels[min(cands)[1]]
    return np.asarray(labels)


def test_dbscan_hand_checked_line():
    # Points on a line. eps 1.5, min_samples 3 (itself included): the cores are 1.0 (with 0, 2) and 11.0
    # (with 10, 12.5); 0, 2, 10 and 12.5 are border points of those; 5.0 is alone.
    x = np.array([0.0, 1.0, 2.0, 5.0, 10.0, 11.0, 12.5])
    d = np.abs(x[:, None] - x[None, :])
    labels = clustering.dbscan(d, eps=1.5, min_samples=3)
    np.testing.assert_array_equal(labels, [0, 0, 0, -1, 1, 1, 1])
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(clustering.dbscan(d, eps=0.5, min_samples=2), [-1] * 7)


@pytest.mark.parametrize("seed", range(4))
def test_dbscan_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, 3)) * 4
    x = np.concatenate([centres[rng.integers(5, size=60)] + rng.normal(size=(60, 3)), rng.normal(size=(10, 3)) * 8])
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    for eps, min_samples in ((1.0, 3), (1.5, 4), (2.5, 6)):
        np.testing.assert_array_equal(clustering.dbscan(d, eps, min_samples), _dbscan_brute_force(d, eps, min_samples))


def test_jaccard_distances_are_the_rerank_jaccard_on_all_pairs():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 8)).astype(np.float32)
    dist = np.asarray(rerank.non_negative_distances(f, "cosine"))
    full = np.asarray(kreciprocal.jaccard_distances(dist, k1=6, k2=3))
    assert full.shape == (40, 40)
    np.testing.assert_allclose(full, full.T, atol=1e-5)
    np.testing.assert_allclose(np.diag(full), 0.0, atol=1e-6)
    np.testing.assert_allclose(full[:15, 15:], np.asarray(rerank.rerank_full(dist, 15, k1=6, k2=3, lambda_value=0.0)),
                               atol=1e-6)


def test_fill_memory_keeps_the_largest_clusters_and_renumbers():
    f = np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 2, 2, 3, 3]]
    raw = np.array([5, 5, 7, 2, 2, 2, -1, 9], np.int32)  # sizes: 5→2, 7→1, 2→3, 9→1
    labels, memory, valid = plus.fill_memory(f * 3.0, raw, capacity=3)
    # Kept: 2 (3 items), 5 (2), and of the singletons the lower id 7; renumbered in id order 2, 5, 7.
    np.testing.assert_array_equal(labels, [1, 1, 2, 0, 0, 0, -1, -1])
    np.testing.assert_array_equal(valid, [True, True, True])
    np.testing.assert_allclose(memory, np.eye(4, dtype=np.float32)[[2, 0, 1]])
    labels, memory, valid = plus.fill_memory(f, raw, capacity=6)
    np.testing.assert_array_equal(valid, [1, 1, 1, 1, 0, 0])
    assert not memory[4:].any()


def _plus_centred(f, cams):  # as plus.cluster_features centres with plus.camera_normalise
    return ops.camera_centred(f, cams, dtype=np.float32, normalise_before=True, normalise_after=True)


def test_camera_centring_removes_each_camera_mean():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(12, 5)).astype(np.float32)
    cams = np.arange(12) % 3
    out = _plus_centred(f, cams)
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    for c in range(3):
        want = fn[cams == c] - fn[cams == c].mean(0)
        np.testing.assert_allclose(out[cams == c], want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_memory_terms_and_update_match_numpy():
    rng = np.random.default_rng(2)
    f, t = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    memory = _unit(rng.normal(size=(5, 4)))
    memory[4] = 0.0
    valid = np.array([1, 1, 1, 1, 0], bool)
    labels = np.array([0, 2, -1, 2, 3, -1], np.int32)
    tau = 0.1

    logits = _unit(f) @ memory[:4].T / tau
    logp = np.log(_softmax(logits))
    want = -np.mean([logp[i, labels[i]] for i in range(6) if labels[i] >= 0])
    loss, frac = losses.cluster_contrast(jnp.asarray(f, jnp.float32), labels, jnp.asarray(memory, jnp.float32),
                                         valid, tau)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(frac) == pytest.approx(4 / 6)

    p_t = _softmax(_unit(t) @ memory[:4].T / tau)
    soft = np.mean(-np.sum(p_t * logp, -1))
    got = losses.memory_soft_cross_entropy(jnp.asarray(f, jnp.float32), jnp.asarray(t, jnp.float32),
                                           jnp.asarray(memory, jnp.float32), valid, tau)
    np.testing.assert_allclose(float(got), soft, rtol=1e-5)

    mom = 0.2
    want_mem = memory.copy()
    for i in range(6):  # in batch order: item 3 sees item 1's update of slot 2
        if labels[i] >= 0:
            want_mem[labels[i]] = _unit(mom * want_mem[labels[i]] + (1 - mom) * _unit(f[i]))
    got_mem = losses.memory_update(jnp.asarray(memory, jnp.float32), jnp.asarray(f, jnp.float32), labels, mom)
    np.testing.assert_allclose(np.asarray(got_mem), want_mem, atol=1e-6)

    # No labelled item / an empty memory: 0, not NaN.
    loss, _ = losses.cluster_contrast(jnp.asarray(f, jnp.float32), np.full(6, -1, np.int32),
                                      jnp.zeros((5, 4)), np.zeros(5, bool), tau)
    assert float(loss) == 0.0
    assert float(losses.memory_soft_cross_entropy(jnp.asarray(f), jnp.asarray(t), jnp.zeros((5, 4)),
                                                  np.zeros(5, bool), tau)) == 0.0


B, T, H, W = 8, 4, 32, 16


@pytest.mark.slow  # compiles the step twice (jit and under a named axis): minutes on 2 shared cores
@pytest.mark.parametrize("variant,term", [("plus", "inter_camera"), ("plus,no_camera_proxies", "cluster_contrast")])
def test_step_memory_under_a_named_axis_equals_jit(variant, term):
    """pmap semantics (vmap with the axis name over 2 replicas of one state): every replica ends with the
    same memory, equal to the one-device step's. Per-device draws are switched off (no erasing, the
    teacher sees the student's clips) so the two runs see the same pixels."""
    config = demo.get_config(variant)
    config.data.height, config.data.width = H, W
    config.augment.erasing_probability = 0.0
    config.adaptation.teacher_augment = False
    model = reid.ReIDNet(num_classes=4, backbone={"depth": "tiny", "width": 8}, disc_hidden=8, disc_dropout=0.0)
    params, batch_stats = reid.init_model(model, jax.random.PRNGKey(0), (1, T, H, W, 3))
    n_target = 20
    extra = variants.init_state(config, model, params, jax.random.PRNGKey(3), 10, num_target_train=n_target)
    rng = np.random.default_rng(0)
    extra["labels"] = jnp.asarray(rng.integers(-1, 3, n_target), jnp.int32)
    extra["memory"] = extra["memory"].at[:3].set(jnp.asarray(_unit(rng.normal(size=(3, extra["memory"].shape[1]))),
                                                             jnp.float32))
    extra["valid"] = extra["valid"].at[:3].set(True)
    if config.plus.camera_proxies:  # slots 0 and 1: one pseudo-identity in cameras 0 and 1; slot 2 another
        extra["slot_cluster"] = extra["slot_cluster"].at[:3].set(jnp.asarray([0, 0, 1], jnp.int32))
        extra["slot_camera"] = extra["slot_camera"].at[:3].set(jnp.asarray([0, 1, 0], jnp.int32))
    state = create_train_state(config, model.apply, params, batch_stats, jax.random.PRNGKey(1), 10, variant_state=extra)
    batch = {"source": {"video": rng.integers(0, 255, (B, T, H, W, 3), dtype=np.uint8),
                        "pid": np.repeat(np.arange(B // 4), 4).astype(np.int32)},
             "target": {"video": rng.integers(0, 255, (B, T, H, W, 3), dtype=np.uint8),
                        "camid": np.arange(B, dtype=np.int32) % 3,
                        "index": rng.permutation(n_target)[:B].astype(np.int32)}}
    one, metrics = jax.jit(variants.make_train_step(model, config))(state, batch)
    assert float(metrics["pseudo_labelled"]) > 0 and float(metrics[term]) > 0
    assert not np.allclose(np.asarray(one.variant_state["memory"]), np.asarray(extra["memory"]))

    shards = jax.tree.map(lambda x: x.reshape((2, x.shape[0] // 2) + x.shape[1:]), batch)
    states = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    step = variants.make_train_step(model, config, axis_name="batch")
    two, _ = jax.jit(jax.vmap(step, axis_name="batch"))(states, shards)
    for key in extra:
        np.testing.assert_array_equal(np.asarray(two.variant_state[key][0]), np.asarray(two.variant_state[key][1]))
    np.testing.assert_allclose(np.asarray(two.variant_state["memory"][0]), np.asarray(one.variant_state["memory"]),
                               atol=2e-5)


def test_plus_configs():
    c = mars.get_config("plus")
    paper = mars.get_config("paper")
    assert (c.variant, c.plus.camera_proxies, c.loss.inter_camera > 0, c.plus.clustering) == ("plus", True, True,
                                                                                              "dbscan")
    # Built on the paper: its target terms as the paper config has them, the clustering from half-way,
    # and our camera term with target BN, clip pairs and camera-centred teacher clusters.
    for name in ("frame_domain", "clip_domain", "consistency_ce", "consistency_dist"):
        assert c.loss[name] == paper.loss[name], name
    assert (c.loss.camera_alignment, c.adaptation.target_bn, c.data.target_views, c.adaptation.camera_centred) == (
        1.0, True, 2, True)
    assert (paper.loss.camera_alignment, paper.adaptation.target_bn) == (0.0, False)
    assert c.plus.start_epoch == c.train.num_epochs // 2 == 75
    c.train.num_epochs = 30  # what --config.train.num_epochs=30 does: the start follows
    assert c.plus.start_epoch == 15
    standalone = demo.get_config("plus,standalone")
    assert (standalone.loss.frame_domain, standalone.loss.consistency_ce, standalone.plus.start_epoch) == (0.0, 0.0, 5)
    variants.check_config(c)
    c.plus.clustering = "spectral"
    with pytest.raises(ValueError, match="plus.clustering"):
        variants.check_config(c)
    paper = demo.get_config("paper")
    assert paper.loss.cluster_contrast == 0 and paper.loss.cluster_soft == 0


def test_reliability_switch_reclusters_at_eps_plus_minus_delta():
    c = demo.get_config("plus")
    rng = np.random.default_rng(0)
    feats = np.repeat(rng.normal(size=(6, 16)), 4, axis=0) + 0.3 * rng.normal(size=(24, 16))
    cams = np.tile(np.arange(4), 6)
    used = {}
    plain = plus.cluster_features(c, feats, cams, epoch=0, report=used)
    assert (used["k1"], used["k2"], used["min_samples"]) == (8, 2, 2)  # the rule: 2 × 4 cameras, round(8 / 5)
    c.plus.reliable_delta, c.plus.reliable_min_iou = 0.05, 0.5
    f = _plus_centred(feats, cams)
    jaccard = np.asarray(kreciprocal.jaccard_distances(np.maximum(1.0 - f @ f.T, 0.0), k1=8, k2=2))
    kept = plus.cluster_features(c, feats, cams, epoch=0)
    np.testing.assert_array_equal(kept, clustering.reliable_dbscan(jaccard, used["eps"], 2, 0.05, 0.5))
    assert np.all((kept == plain) | (kept == -1))  # it only ever turns labels into outliers
    variants.check_config(c)
    c.plus.clustering = "kmeans"
    with pytest.raises(ValueError, match=r"config.plus.reliable_delta=0.05 re-runs DBSCAN .* needs config.plus.clustering='dbscan'"):
        variants.check_config(c)
    c.plus.clustering, c.plus.reliable_min_iou = "dbscan", 1.5
    with pytest.raises(ValueError, match=r"reliable_min_iou=1.5 in \[0, 1\]"):
        variants.check_config(c)


def test_camera_proxy_memory_and_terms_match_numpy():
    """CAP's proxies: one slot per (pseudo-identity, camera); the intra-camera contrast sees only the
    clip's camera; the inter-camera contrast takes every proxy of its pseudo-identity as a positive
    against the k most similar other proxies (a per-item numpy loop as the oracle)."""
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(9, 5)).astype(np.float32)
    raw = np.array([3, 3, 3, -1, 8, 8, 1, 1, 1], np.int32)
    cams = np.array([0, 1, 1, 0, 2, 0, 2, 2, 2])
    out = plus.fill_proxy_memory(feats, raw, cams, capacity=6)
    # Ids 1 (1 camera), 3 (cameras 0, 1), 8 (cameras 0, 2) → new ids 0, 1, 2; slots in (id, camera) order.
    np.testing.assert_array_equal(out["slot_cluster"], [0, 1, 1, 2, 2, -1])
    np.testing.assert_array_equal(out["slot_camera"], [2, 0, 1, 0, 2, -1])
    np.testing.assert_array_equal(out["labels"], [1, 2, 2, -1, 4, 3, 0, 0, 0])
    np.testing.assert_allclose(out["memory"][2], _unit(_unit(feats[1]) + _unit(feats[2])), atol=1e-6)
    assert not out["memory"][5].any() and list(out["valid"]) == [1, 1, 1, 1, 1, 0]
    # Four slots: id 3 (3 tracklets, 2 proxies) and id 1 (3, 1) fit; id 8 (2 proxies) no longer does.
    small = plus.fill_proxy_memory(feats, raw, cams, capacity=4)
    np.testing.assert_array_equal(small["labels"], [1, 2, 2, -1, -1, -1, 0, 0, 0])

    f = rng.normal(size=(7, 5))
    memory, valid = out["memory"], out["valid"]
    labels = np.array([0, 1, 2, 3, 4, -1, 2], np.int32)
    tau, k = 0.1, 2
    s = _unit(f) @ memory.T / tau
    intra, inter = [], []
    for i in range(7):
        if labels[i] < 0:
            continue
        same_cam = [j for j in range(6) if valid[j] and out["slot_camera"][j] == out["slot_camera"][labels[i]]]
        intra.append(-(s[i, labels[i]] - np.log(np.exp(s[i, same_cam]).sum())))
        pos = [j for j in range(6) if valid[j] and out["slot_cluster"][j] == out["slot_cluster"][labels[i]]]
        neg = sorted((j for j in range(6) if valid[j] and j not in pos), key=lambda j: -s[i, j])[:k]
        denom = np.log(np.exp(s[i, pos]).sum() + np.exp(s[i, neg]).sum())
        inter.append(-np.mean([s[i, p] - denom for p in pos]))
    args = (jnp.asarray(f, jnp.float32), labels, jnp.asarray(memory), valid)
    np.testing.assert_allclose(float(losses.intra_camera_contrast(*args, out["slot_camera"], tau)), np.mean(intra),
                               rtol=1e-5)
    np.testing.assert_allclose(float(losses.inter_camera_contrast(*args, out["slot_cluster"], tau, k)),
                               np.mean(inter), rtol=1e-5)
    # More negatives asked for than there are: only the real ones count (the masked slot adds nothing).
    wide = float(losses.inter_camera_contrast(*args, out["slot_cluster"], tau, 6))
    assert np.isfinite(wide) and wide > float(losses.inter_camera_contrast(*args, out["slot_cluster"], tau, k))

    # plus.inter_camera_positives='other_cameras': the clip's own proxy is neither positive nor negative;
    # a clip of a one-camera pseudo-identity (label 0: id 1, camera 2 only) has no positive and counts nowhere.
    other = []
    for i in range(7):
        pos = [j for j in range(6) if valid[j] and out["slot_cluster"][j] == out["slot_cluster"][labels[i]]
               and j != labels[i]]
        if labels[i] < 0 or not pos:
            continue
        neg = sorted((j for j in range(6) if valid[j] and out["slot_cluster"][j] != out["slot_cluster"][labels[i]]),
                     key=lambda j: -s[i, j])[:k]
        denom = np.log(np.exp(s[i, pos]).sum() + np.exp(s[i, neg]).sum())
        other.append(-np.mean([s[i, p] - denom for p in pos]))
    assert len(other) == 5  # items 0 (one camera) and 5 (outlier) left out
    got = losses.inter_camera_contrast(*args, out["slot_cluster"], tau, k, other_cameras_only=True)
    np.testing.assert_allclose(float(got), np.mean(other), rtol=1e-5)
    grad = jax.grad(lambda x: losses.inter_camera_contrast(x, *args[1:], out["slot_cluster"], tau, k,
                                                           other_cameras_only=True))(args[0])
    assert np.isfinite(np.asarray(grad)).all() and not np.asarray(grad)[0].any()
    # Nothing but one-camera pseudo-identities: 0, not NaN.
    lonely = losses.inter_camera_contrast(*args[:1], np.array([0, -1, 0, -1, 0, -1, 0], np.int32), *args[2:],
                                          out["slot_cluster"], tau, k, other_cameras_only=True)
    assert float(lonely) == 0.0


def test_camera_proxy_config_checks():
    c = demo.get_config("plus")
    variants.check_config(c)
    assert (c.plus.camera_proxies, c.loss.cluster_contrast, c.loss.intra_camera, c.loss.inter_camera) == (
        True, 0.0, 1.0, 0.5)
    single = demo.get_config("plus,no_camera_proxies")
    variants.check_config(single)
    assert (single.plus.camera_proxies, single.loss.cluster_contrast, single.loss.intra_camera) == (False, 1.0, 0.0)
    c.loss.cluster_contrast = 1.0
    with pytest.raises(ValueError, match=r"cluster_contrast=1.0 with plus.camera_proxies"):
        variants.check_config(c)
    c.loss.cluster_contrast, c.plus.hard_negatives = 0.0, c.plus.max_clusters + 1
    with pytest.raises(ValueError, match=r"config.plus.hard_negatives=257 must lie in 1..plus.max_clusters=256"):
        variants.check_config(c)
    c = demo.get_config("plus,no_camera_proxies")
    c.loss.inter_camera = 0.5
    with pytest.raises(ValueError, match=r"set config.plus.camera_proxies=True"):
        variants.check_config(c)


def test_soft_term_over_camera_proxies_sums_each_pseudo_identity_as_numpy_does():
    # 3 pseudo-identities over 6 proxies (identity 1 has three cameras), one empty slot.
    rng = np.random.default_rng(5)
    f, t = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    memory = _unit(rng.normal(size=(7, 6)))
    memory[6] = 0.0
    valid = np.array([1, 1, 1, 1, 1, 1, 0], bool)
    slot_cluster = np.array([0, 1, 1, 2, 1, 2, -1], np.int32)
    tau = 0.05
    p_s, p_t = (_softmax(_unit(x) @ memory[:6].T / tau) for x in (f, t))
    per_identity = lambda p: np.stack([p[:, slot_cluster[:6] == g].sum(-1) for g in range(3)], -1)  # noqa: E731
    want = np.mean(-np.sum(per_identity(p_t) * np.log(per_identity(p_s)), -1))
    args = (jnp.asarray(f, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(memory, jnp.float32), valid, tau)
    got = losses.memory_soft_cross_entropy(*args, slot_groups=jnp.asarray(slot_cluster))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    # Per proxy it is another number: the own-camera proxy is its own class there.
    per_proxy = np.mean(-np.sum(p_t * np.log(p_s), -1))
    np.testing.assert_allclose(float(losses.memory_soft_cross_entropy(*args)), per_proxy, rtol=1e-5)
    assert abs(per_proxy - want) > 0.1
    # One slot per group gives the per-slot loss, and the gradient is finite with far-away groups.
    singles = np.where(valid, np.arange(7), -1).astype(np.int32)
    np.testing.assert_allclose(float(losses.memory_soft_cross_entropy(*args, slot_groups=jnp.asarray(singles))),
                               per_proxy, rtol=1e-5)
    grad = jax.grad(lambda x: losses.memory_soft_cross_entropy(x, *args[1:], slot_groups=jnp.asarray(slot_cluster)))(
        args[0])
    assert np.isfinite(np.asarray(grad)).all()


def test_inter_camera_positives_switch_reaches_the_term():
    assert demo.get_config("plus").plus.inter_camera_positives == "all"
    assert mars.get_config("plus").plus.inter_camera_positives == "all"
    assert demo.get_config("plus,other_camera_positives").plus.inter_camera_positives == "other_cameras"
    config = demo.get_config("plus")
    config.plus.inter_camera_positives = "own"
    with pytest.raises(ValueError, match=r"config.plus.inter_camera_positives='own'; expected one of "
                                         r"\('all', 'other_cameras'\)"):
        variants.check_config(config)
    # The step's term: the other-camera form only with the modifier (two pseudo-identities: slots 0, 1 of
    # one in cameras 0 and 1, slot 2 of another in camera 0 alone).
    rng = np.random.default_rng(6)
    memory = jnp.asarray(_unit(rng.normal(size=(4, 8))), jnp.float32).at[3].set(0.0)
    extra = {"memory": memory, "valid": jnp.asarray([1, 1, 1, 0], bool),
             "labels": jnp.asarray([0, 1, 2, 0], jnp.int32), "slot_cluster": jnp.asarray([0, 0, 1, -1], jnp.int32),
             "slot_camera": jnp.asarray([0, 1, 0, -1], jnp.int32)}
    features = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
    args = (features, extra["labels"], memory, extra["valid"], extra["slot_cluster"])
    for name, other_cameras_only in (("plus", False), ("plus,other_camera_positives", True)):
        config = demo.get_config(name)
        config.plus.hard_negatives = 2
        ctx = terms.TermContext(config, source={}, labels=jnp.zeros(4, jnp.int32), extra=extra,
                                target_index=jnp.arange(4, dtype=jnp.int32),
                                target_forward=lambda: {"bn_embedding": features})
        want = losses.inter_camera_contrast(*args, config.plus.temperature, config.plus.hard_negatives,
                                            other_cameras_only=other_cameras_only)
        assert float(terms.TERMS.get("inter_camera").fn(ctx)[0]["inter_camera"]) == float(want)
    assert float(losses.inter_camera_contrast(*args, 0.05, 3)) != float(
        losses.inter_camera_contrast(*args, 0.05, 3, other_cameras_only=True))


def test_soft_targets_switch_reaches_the_term():
    config = demo.get_config("plus")
    assert config.plus.soft_targets == "identity"
    assert demo.get_config("plus,soft_per_proxy").plus.soft_targets == "proxy"
    config.plus.soft_targets = "camera"
    with pytest.raises(ValueError, match=r"config.plus.soft_targets='camera'; expected one of \('identity', 'proxy'\)"):
        variants.check_config(config)


def test_clustering_settings_follow_the_cameras():
    config = demo.get_config("plus")
    settings = lambda cams: plus.clustering_settings(config, np.asarray(cams))  # noqa: E731
    assert settings(np.tile(np.arange(6), 40)) == {"k1": 12, "k2": 2, "min_samples": 2}  # MARS-like: 6 cameras
    assert settings(np.tile(np.arange(2), 150)) == {"k1": 4, "k2": 1, "min_samples": 2}  # iLIDS-VID / PRID: 2
    assert settings(np.tile(np.arange(15), 40)) == {"k1": 30, "k2": 6, "min_samples": 2}  # LS-VID: 15
    assert settings(np.arange(5) % 3)["k1"] == 4  # capped at N − 1
    config.plus.k1, config.plus.k2 = 7, 3  # explicit settings win
    assert settings(np.tile(np.arange(6), 4)) == {"k1": 7, "k2": 3, "min_samples": 2}


@pytest.mark.parametrize("min_samples", [2, 3])
def test_rule_eps_is_the_quantile_of_the_k_distances_of_a_dense_oracle(min_samples):
    rng = np.random.default_rng(min_samples)
    centres = rng.normal(size=(12, 16))
    feats = _unit(np.repeat(centres, 5, axis=0) + 0.5 * rng.normal(size=(60, 16))).astype(np.float32)
    dense = np.asarray(kreciprocal.jaccard_distances(np.maximum(1.0 - feats @ feats.T, 0.0), k1=8, k2=2), np.float64)
    np.fill_diagonal(dense, np.inf)
    kth = np.sort(dense, axis=1)[:, min_samples - 2]  # the (min_samples − 1)-th nearest other point
    graph = kreciprocal.jaccard_graph(feats, k1=8, k2=2, radius=1.0)
    for q in (0.5, 0.8):
        eps = plus.neighbour_eps(graph, min_samples, q)
        assert eps == pytest.approx(min(np.quantile(kth, q, method="lower"), kth[kth < 1].max()))
        if min_samples == 2:  # exactly the points within eps of another one are clustered
            labels = clustering.dbscan(plus.restrict(graph, eps), eps, 2)
            np.testing.assert_array_equal(labels >= 0, kth <= eps)
            assert np.mean(labels >= 0) >= q


def test_rule_eps_stays_below_one_when_most_points_are_isolated():
    graph = clustering.RadiusGraph(5, np.array([0]), np.array([1]), np.array([0.3], np.float32), 1.0)
    assert plus.neighbour_eps(graph, 2, 0.8) == pytest.approx(0.3)  # not 1, which would join every pair
    empty = clustering.RadiusGraph(4, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 1.0)
    assert plus.neighbour_eps(empty, 2, 0.8) == 0.0


def test_most_clusters_eps_picks_the_radius_before_pairs_chain():
    # Three tight pairs (0.1); at 0.3 points 6 and 7 join two of them and 8–9 pair up (4 clusters); at
    # 0.5 points 10–12 chain everything into 2. Nearest-neighbour distances: six 0.1, four 0.3, three
    # 0.5, so the 5–45% quantiles give radius 0.1 (3 clusters), 50–80% 0.3 (4), 85–95% 0.5 (2).
    edges = [(0, 1, 0.1), (2, 3, 0.1), (4, 5, 0.1), (6, 1, 0.3), (7, 3, 0.3), (8, 9, 0.3),
             (10, 5, 0.5), (10, 9, 0.5), (11, 1, 0.5), (11, 3, 0.5), (12, 10, 0.5)]
    first, second, distance = (np.array(column) for column in zip(*edges))
    graph = clustering.RadiusGraph(13, first, second, distance.astype(np.float32), 1.0)
    eps, quantile = plus.most_clusters_eps(graph, 2)
    assert eps == pytest.approx(0.3) and quantile == 0.8  # ties at 4 clusters: the largest radius
    eps, quantile = plus.most_clusters_eps(graph, 2, quantiles=(0.45, 0.95))
    assert eps == pytest.approx(0.1) and quantile == 0.45  # 3 clusters beat 2
    eps, quantile = plus.most_clusters_eps(graph, 2, quantiles=(0.95, 0.6, 0.45))
    assert eps == pytest.approx(0.3) and quantile == 0.6  # the peak, whatever the order of the grid


def test_most_clusters_eps_matches_a_dense_oracle():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(10, 16))
    feats = _unit(np.repeat(centres, 4, axis=0) + 0.6 * rng.normal(size=(40, 16))).astype(np.float32)
    dense = np.asarray(kreciprocal.jaccard_distances(np.maximum(1.0 - feats @ feats.T, 0.0), k1=8, k2=2), np.float64)
    off = dense + np.diag(np.full(40, np.inf))
    kth = off.min(axis=1)
    counts = []
    for q in plus.EPS_GRID:  # the k-distance quantile and the dense DBSCAN's cluster count at it
        eps = min(np.quantile(kth, q, method="lower"), kth[kth < 1].max())
        labels = clustering.dbscan(dense, eps, 2)
        counts.append((len(np.unique(labels[labels >= 0])), eps, q))
    most = max(c for c, _, _ in counts)
    want = [(eps, q) for c, eps, q in counts if c == most][-1]
    graph = kreciprocal.jaccard_graph(feats, k1=8, k2=2, radius=1.0)
    eps, quantile = plus.most_clusters_eps(graph, 2)
    assert (eps, quantile) == (pytest.approx(want[0]), want[1])
    config = demo.get_config("plus,most_clusters")
    config.plus.camera_normalise, config.plus.k1 = False, 8
    report = {}
    labels = plus.cluster_features(config, feats, np.zeros(40, int), epoch=0, report=report)
    assert report["eps"] == pytest.approx(want[0]) and report["eps_quantile"] == want[1]
    np.testing.assert_array_equal(labels, clustering.dbscan(dense, report["eps"], 2))


def test_an_unknown_eps_rule_is_named():
    config = demo.get_config("plus")
    assert config.plus.eps_rule == "quantile" and demo.get_config("plus,most_clusters").plus.eps_rule == "most_clusters"
    config.plus.eps_rule = "largest"
    with pytest.raises(ValueError, match=r"config.plus.eps_rule='largest'; expected one of \('quantile', 'most_clusters'\)"):
        variants.check_config(config)


def test_kmeans_rule_takes_as_many_clusters_as_dbscan_finds():
    config = demo.get_config("plus,kmeans")
    rng = np.random.default_rng(0)
    feats = np.repeat(rng.normal(size=(6, 16)), 4, axis=0) + 0.2 * rng.normal(size=(24, 16))
    cams = np.tile(np.arange(4), 6)
    dbscan_config = demo.get_config("plus")
    found = plus.cluster_features(dbscan_config, feats, cams, epoch=0)
    report = {}
    labels = plus.cluster_features(config, feats, cams, epoch=0, report=report)
    assert report["kmeans_clusters"] == len(np.unique(found[found >= 0])) and labels.min() >= 0


def test_the_divergence_guard_forgets_the_paper_losses_at_the_first_clustering_epoch_only():
    config = demo.get_config("plus")
    config.plus.max_clusters = 64
    state = create_train_state(config, None, {"w": jnp.ones(2)}, {}, jax.random.PRNGKey(0), 10)
    guard = state.guard
    for loss in (2.0, 3.0):  # two accepted steps of the paper's terms: median 2.5
        _, guard, _ = divergence.judge(guard, jnp.float32(loss), jnp.float32(1.0), jnp.bool_(True), factor=10.0,
                                       min_history=1)
    state = state.replace(guard=guard)
    # Eight well-separated pseudo-identities of five clips, each seen by two cameras.
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16))
    features = np.repeat(centres, 5, axis=0) + 0.05 * rng.normal(size=(40, 16))
    features = (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)
    camids = np.tile(np.arange(2), 20).astype(np.int32)
    start = config.plus.start_epoch

    def guard_after(epoch):
        new_state, _ = plus.epoch_start(config, state, lambda variables: features, camids, epoch)
        return new_state.guard

    assert int(guard_after(start - 1)["count"]) == 2
    assert int(guard_after(start + 1)["count"]) == 2  # a resumed run passes later boundaries: nothing forgotten
    forgotten = guard_after(start)
    assert int(forgotten["count"]) == 0
    np.testing.assert_array_equal(forgotten["loss"], np.zeros_like(guard["loss"]))
    # The memory terms raise the loss well past 10 × 2.5: before forgetting that is an explosion, after it
    # the first loss of the new definition starts the new median.
    judged = {name: divergence.judge(g, jnp.float32(40.0), jnp.float32(1.0), jnp.bool_(True), factor=10.0,
                                     min_history=1)[0] for name, g in (("before", guard), ("after", forgotten))}
    assert bool(judged["before"]) and not bool(judged["after"])


def test_true_identities_diagnostic_puts_the_labels_in_place_of_the_clustering():
    config = demo.get_config("plus,true_identities")
    config.plus.max_clusters = 64
    state = create_train_state(config, None, {"w": jnp.ones(2)}, {}, jax.random.PRNGKey(0), 10)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(7, 16)).astype(np.float32)  # no structure: DBSCAN would find nothing like the labels
    camids = np.array([0, 1, 0, 1, 2, 0, 1], np.int32)
    identities = np.array([40, 40, 7, 7, 7, -1, 40])  # the last but one is junk
    new_state, stats = plus.epoch_start(config, state, lambda variables: features, camids, config.plus.start_epoch,
                                        identities=identities)
    v = new_state.variant_state
    # Proxies ordered by (identity renumbered 0.., camera): 7 → 0 (cameras 0, 1, 2), 40 → 1 (cameras 0, 1).
    np.testing.assert_array_equal(v["labels"], [3, 4, 0, 1, 2, -1, 4])
    np.testing.assert_array_equal(v["slot_cluster"][:6], [0, 0, 0, 1, 1, -1])
    np.testing.assert_array_equal(v["slot_camera"][:6], [0, 1, 2, 0, 1, -1])
    assert (stats["clusters"], stats["proxies"], stats["outliers"]) == (2.0, 5.0, pytest.approx(1 / 7))
    with pytest.raises(ValueError, match=r"^config.plus.true_identities=True needs the target training labels "
                                         r"\(identities=\), one per tracklet: got None for 7$"):
        plus.epoch_start(config, state, lambda variables: features, camids, config.plus.start_epoch)


def test_only_the_diagnostic_asks_the_loop_for_target_labels():
    assert variants.reads_target_labels(demo.get_config("plus,true_identities"))
    for source in ("plus", "plus,hard", "paper", "source_only,cam,tbn", "paper,cam,pairs,tbn"):
        assert not variants.reads_target_labels(demo.get_config(source)), source
    assert not variants.reads_target_labels(mars.get_config("plus"))
    config = demo.get_config("plus,true_identities,with_reliability")
    with pytest.raises(ValueError, match=r"^config.plus.true_identities=True takes the true identities as they are"):
        variants.check_config(config)


@pytest.mark.parametrize("modifier,asked", [("", {}), (",dense_clusters", {"temporal": "dense"})])
def test_plus_asks_the_loop_for_its_clustering_clips(modifier, asked):
    config = demo.get_config(f"plus{modifier}")
    config.plus.max_clusters = 64
    state = create_train_state(config, None, {"w": jnp.ones(2)}, {}, jax.random.PRNGKey(0), 10)
    rng = np.random.default_rng(0)
    features = np.repeat(rng.normal(size=(4, 16)), 3, axis=0).astype(np.float32)
    calls = []

    def extract(variables, **kwargs):
        calls.append(kwargs)
        return features

    plus.epoch_start(config, state, extract, np.tile(np.arange(3), 4).astype(np.int32), config.plus.start_epoch)
    assert calls == [asked]
    config.plus.cluster_temporal = "restricted_random"
    with pytest.raises(ValueError, match=r"^config.plus.cluster_temporal='restricted_random'; expected '' \(the "):
        variants.check_config(config)


def test_outliers_become_clusters_of_their_own_after_the_largest_id():
    np.testing.assert_array_equal(plus.outliers_as_instances(np.array([1, -1, 0, -1, 1])), [1, 2, 0, 3, 1])
    np.testing.assert_array_equal(plus.outliers_as_instances(np.array([-1, -1])), [0, 1])
    config = demo.get_config("plus,outlier_instances")
    config.plus.max_clusters = 64
    state = create_train_state(config, None, {"w": jnp.ones(2)}, {}, jax.random.PRNGKey(0), 10)
    rng = np.random.default_rng(0)
    # Four tight pairs (one per camera pair) and four isolated points that DBSCAN leaves out.
    centres = rng.normal(size=(8, 16))
    features = np.concatenate([np.repeat(centres[:4], 2, axis=0) + 0.01 * rng.normal(size=(8, 16)), centres[4:]])
    camids = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1], np.int32)
    _, without = plus.epoch_start(demo.get_config("plus"), state, lambda variables: features.astype(np.float32),
                                  camids, config.plus.start_epoch)
    new_state, stats = plus.epoch_start(config, state, lambda variables: features.astype(np.float32), camids,
                                        config.plus.start_epoch)
    assert without["outliers"] > 0 and stats["outliers"] == 0.0
    assert stats["clusters"] == without["clusters"] + round(without["outliers"] * len(features))
