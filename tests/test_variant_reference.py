"""The reference variant's step (svreid_jax.variants.reference): each behaviour of the authors' code.

Tiny model and MS-TCN; one jitted step shared by the state-evolution tests, one jitted jacobian per
D1 setting for the gradient-routing tests.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import authors_numpy
from configs import demo
from svreid_jax import parallel, variants
from svreid_jax.data import augment
from svreid_jax.variants import common, reference
from svreid_jax.models import grl, reid
from svreid_jax.state import create_train_state

B, T, H, W, K = 8, 4, 32, 16, 4
STEPS_PER_EPOCH = 2


def _config(**flags):
    c = demo.get_config("reference,micro")
    c.data.height, c.data.width = H, W
    c.reference.features, c.reference.num_layers, c.reference.num_stages = 8, 1, 3
    c.reference.consistency_n_init, c.reference.consistency_max_iter = 2, 20
    for k, v in flags.items():
        setattr(c.reference, k, v)
    return c


def _setup(config):
    model = reid.ReIDNet(num_classes=K, backbone={"depth": "tiny", "width": 8}, disc_hidden=8)
    params, batch_stats = reid.init_model(model, jax.random.PRNGKey(0), (1, T, H, W, 3))
    temporal = reference.build_temporal_model(config, K)
    ref = reference.init_reference_state(config, temporal, jax.random.PRNGKey(2), STEPS_PER_EPOCH,
                                               params["bnneck"]["scale"].shape[-1])
    state = create_train_state(config, model.apply, params, batch_stats, jax.random.PRNGKey(1), STEPS_PER_EPOCH,
                               variant_state=ref)
    return model, temporal, state


def _batch(seed):
    rng = np.random.default_rng(seed)
    return {"source": {"video": rng.integers(0, 255, (B, T, H, W, 3), dtype=np.uint8),
                       "pid": np.repeat(np.arange(B // 4), 4).astype(np.int32)},
            "target": {"video": rng.integers(0, 255, (B, T, H, W, 3), dtype=np.uint8)}}


def _max_abs_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def run():
    """Three steps over 1.5 epochs (2 steps per epoch); every intermediate state and metrics kept."""
    config = _config()
    model, _, state = _setup(config)
    mesh = parallel.data_mesh()
    step = parallel.jit_train_step(variants.make_train_step(model, config), mesh, donate=False)
    states, metrics = [parallel.replicate(state, mesh)], []
    for i in range(3):
        s, m = step(states[-1], parallel.shard_batch(_batch(i), mesh))
        states.append(s)
        metrics.append(jax.device_get(m))
    return config, states, metrics


@pytest.mark.slow  # compiles the reference step or its jacobian (about a minute each on CPU)
def test_teacher_is_reset_to_the_student_at_every_epoch_start(run):
    _, states, metrics = run
    # Steps 0 and 2 start an epoch: α = 0, so after them the teacher is exactly the student (D3).
    for i in (1, 3):
        assert _max_abs_diff(states[i].ema_params, states[i].params) == 0.0, f"after step {i - 1}"
    # Step 1 (t = 1 in its epoch): α = 1/2, the teacher is half way between its old value and the student.
    assert [m["teacher_decay"] for m in metrics] == [0.0, 0.5, 0.0]
    want = jax.tree.map(lambda t, s: 0.5 * t + 0.5 * s, states[1].ema_params, states[2].params)
    assert _max_abs_diff(want, states[2].ema_params) < 1e-6
    assert _max_abs_diff(states[2].ema_params, states[2].params) > 0


@pytest.mark.slow  # compiles the reference step or its jacobian (about a minute each on CPU)
def test_loss_weights_accumulate_gradients_and_all_fall_by_about_lr(run):
    config, states, metrics = run
    lr = config.reference.weight_lr
    grad_sum = np.zeros(3)
    for i, m in enumerate(metrics):
        a_before = np.asarray(states[i].variant_state["weights"])
        a_after = np.asarray(states[i + 1].variant_state["weights"])
        # ∂L/∂a_i = e^{a_i}·L_i, summed over every step so far (the reference never zeroes it, D4).
        grad_sum += np.exp(a_before) * np.array([m["reid"], m["stage"], m["consistency"]])
        np.testing.assert_allclose(np.asarray(states[i + 1].variant_state["weight_grad_sum"]), grad_sum, rtol=1e-5)
        step = a_after - a_before
        assert np.all(step < -0.9 * lr) and np.all(step > -1.01 * lr), (i, step)


@pytest.mark.slow  # compiles the reference step or its jacobian (about a minute each on CPU)
def test_consistency_constant_is_computed_on_the_device(run):
    config, states, metrics = run
    assert config.reference.consistency_constant
    for m in metrics:
        # L_cons = 10·L_01 + L_dist, L_01 a fraction of the target batch's clips.
        assert m["cons_mismatch"] * config.batch.target_size == pytest.approx(
            round(float(m["cons_mismatch"] * config.batch.target_size)), abs=1e-5)
        assert 0.0 <= m["cons_mismatch"] <= 1.0 and m["cons_dist"] > 0
        assert m["consistency"] == pytest.approx(10 * m["cons_mismatch"] + m["cons_dist"], rel=1e-6)
    # No host callback in the step: k-means runs inside the compiled program.
    model, _, state = _setup(config)
    jaxpr = str(jax.make_jaxpr(variants.make_train_step(model, config))(state, _batch(0)))
    assert "callback" not in jaxpr and "while" in jaxpr


@pytest.mark.slow  # compiles the reference step or its jacobian (about a minute each on CPU)
def test_temporal_optimizer_is_recreated_every_epoch(run):
    _, states, _ = run
    counts = [int(states[i].variant_state["temporal_opt_state"][0].count) for i in range(4)]
    # Epoch 0: steps 0, 1 → count 1, 2; step 2 starts epoch 1 with a fresh Adam → count 1 again (D12).
    assert counts == [0, 1, 2, 1]
    # A fresh Adam's first update is ±lr on every coordinate with a non-negligible gradient.
    delta = np.concatenate([np.ravel(a - b) for a, b in zip(
        jax.tree.leaves(states[3].variant_state["temporal_params"]), jax.tree.leaves(states[2].variant_state["temporal_params"]))])
    # (|Δ| = lr·|g|/(|g| + ε): coordinates with |g| near ε = 1e-8 move less.)
    moved = delta[delta != 0]
    assert moved.size > 0.5 * delta.size
    assert np.mean(np.abs(np.abs(moved) - 3e-4) < 3e-6) > 0.95


def _jacobian(config):
    """d[objective, L_st, L_cons, L_reid]/d(params, temporal_params) at a fixed state and batch."""
    model, temporal, state = _setup(config)
    loss_fn = reference.make_reference_losses(model, temporal, config)
    batch = _batch(5)
    keys = dict(zip(("src_drop", "tgt_drop", "tmp_src", "tmp_tgt", "kmeans"), jax.random.split(jax.random.key(9), 5)))
    source = jnp.asarray(batch["source"]["video"], jnp.float32) / 255.0
    target = jnp.asarray(batch["target"]["video"], jnp.float32) / 255.0
    ctx = dict(batch_stats=state.batch_stats, temporal_batch_stats=state.variant_state["temporal_batch_stats"],
               source=source, labels=jnp.asarray(batch["source"]["pid"]), target=target,
               teacher_embedding=jnp.asarray(np.random.default_rng(0).normal(size=(B, 64)), jnp.float32),
               beta=jnp.float32(grl.grl_beta(3000, 20000)), sequence_beta=jnp.float32(0.4), keys=keys)

    def outputs(params, temporal_params):
        objective, (_, terms, *_) = loss_fn(params, temporal_params, state.variant_state["weights"], ctx)
        return jnp.stack([objective, terms["stage"], terms["consistency"], terms["reid"]])

    jac = jax.jit(jax.jacrev(outputs, argnums=(0, 1)))(state.params, state.variant_state["temporal_params"])
    return state, jac


def _row(tree, i):
    return jax.tree.map(lambda g: g[i], tree)


def _norm(tree):
    return float(jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree))))


@pytest.mark.slow  # compiles the reference step or its jacobian (about a minute each on CPU)
def test_detached_inputs_zero_backbone_gradient_and_double_counted_stage_loss():
    config = _config()
    state, (jp, jt) = _jacobian(config)
    # D1: neither the stage losses (domain, entropy, MS-TCN) nor the k-means constant reach the student.
    assert _norm(_row(jp, 1)) == 0.0 and _norm(_row(jp, 2)) == 0.0
    assert _norm(_row(jp, 3)) > 0 and _norm(_row(jt, 1)) > 0
    # The student's gradient is e^{a0}·∇L_reid.
    a = np.asarray(state.variant_state["weights"])
    for got, want in zip(jax.tree.leaves(_row(jp, 0)), jax.tree.leaves(_row(jp, 3))):
        np.testing.assert_allclose(np.asarray(got), np.exp(a[0]) * np.asarray(want), rtol=1e-4, atol=1e-7)
    # D5: the temporal module's gradient is (1 + e^{a1})·∇L_st.
    for got, want in zip(jax.tree.leaves(_row(jt, 0)), jax.tree.leaves(_row(jt, 1))):
        np.testing.assert_allclose(np.asarray(got), (1 + np.exp(a[1])) * np.asarray(want), rtol=1e-4, atol=1e-7)


@pytest.mark.slow  # compiles the reference step or its jacobian (about a minute each on CPU)
def test_without_detach_and_double_count_the_stage_losses_reach_the_backbone():
    # D1, D5 and D2 on the paper's side: L_st reaches the backbone, and so does the differentiable
    # consistency L^C_1 + L^C_2 that replaces the host k-means constant.
    config = _config(detach_temporal_input=False, double_count_stage_loss=False, consistency_constant=False)
    state, (jp, jt) = _jacobian(config)
    backbone_stage = _row(jp, 1)["backbone"]
    assert _norm(backbone_stage) > 0
    assert _norm(_row(jp, 2)["backbone"]) > 0 and _norm(_row(jt, 2)) == 0.0
    a = np.asarray(state.variant_state["weights"])
    for got, want in zip(jax.tree.leaves(_row(jt, 0)), jax.tree.leaves(_row(jt, 1))):
        np.testing.assert_allclose(np.asarray(got), np.exp(a[1]) * np.asarray(want), rtol=1e-4, atol=1e-7)


def test_bad_reference_config_and_unknown_variant_are_refused():
    config = _config()
    config.reference.adv_stages = (1, 5)
    with pytest.raises(ValueError, match="outside 0..2"):
        reference.check_config(config)
    config = _config()
    config.reference.weight_init = (0.0, 1.0)
    with pytest.raises(ValueError, match="needs 3 values"):
        reference.check_config(config)
    paper = demo.get_config("paper,micro")
    paper.variant = "nope"
    with pytest.raises(ValueError, match="config.variant='nope': unknown variant; expected one of \\['paper', 'plus', 'reference'"):
        variants.make_train_step(reid.ReIDNet(num_classes=K, backbone={"depth": "tiny"}), paper)


@pytest.mark.slow  # compiles the reference step under a named axis: minutes on CPU
def test_step_under_a_named_axis_as_pmap_runs_it(monkeypatch):
    """What pmap runs per device, as vmap with a named axis over 2 replicas of one state, with the
    reference's per-device BatchNorm (parallel.sync_bn=False): each device erases its clips with its
    own draws; InfoNCE sees the gathered batch and is normalised as the authors' code (compared with
    the transcription on the projections each device computes with its own BN statistics);
    gradients are pmean'ed and the running statistics averaged, so the replicas stay identical."""
    config = _config()
    config.loss.infonce = 0.001
    config.augment.erasing_probability = 1.0  # every clip erased: the boxes show
    assert (config.parallel.sync_bn, config.reference.infonce_sum_groups) == (False, True)
    model = reid.ReIDNet(num_classes=K, backbone={"depth": "tiny", "width": 8}, disc_hidden=8, infonce_projection=True)
    params, batch_stats = reid.init_model(model, jax.random.PRNGKey(0), (1, T, H, W, 3))
    temporal = reference.build_temporal_model(config, K)
    ref = reference.init_reference_state(config, temporal, jax.random.PRNGKey(2), STEPS_PER_EPOCH,
                                         params["bnneck"]["scale"].shape[-1])
    state = create_train_state(config, model.apply, params, batch_stats, jax.random.PRNGKey(1), STEPS_PER_EPOCH,
                               variant_state=ref)
    # The prepared clips of every device, by call (source, then target), sent to the host as they are made.
    prepared, calls = {}, []
    original = common.prepare_clips

    def spy(video, rng, cfg):
        out = original(video, rng, cfg)
        name = ("source", "target")[len(calls)]
        calls.append(name)
        jax.debug.callback(lambda i, x: prepared.setdefault(name, {}).__setitem__(int(i), np.asarray(x)),
                           jax.lax.axis_index("batch"), out)
        return out

    monkeypatch.setattr(common, "prepare_clips", spy)
    batch = _batch(7)
    for part in ("source", "target"):  # both devices get the same pixels: only the keys can tell them apart
        batch[part]["video"][B // 2:] = batch[part]["video"][:B // 2]
    shards = jax.tree.map(lambda x: x.reshape((2, x.shape[0] // 2) + x.shape[1:]), batch)
    states = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    step = reference.make_reference_train_step(model, temporal, config, axis_name="batch")
    new, metrics = jax.jit(jax.vmap(step, axis_name="batch"))(states, shards)
    jax.block_until_ready(new)
    assert calls == ["source", "target"] and set(prepared["source"]) == {0, 1}

    # Per-device draws: the same pixels on both devices, different erased boxes.
    fill = np.asarray(augment.ERASE_FILL, np.float32)
    for part in ("source", "target"):
        boxes = [np.all(prepared[part][d] == fill, axis=-1) for d in (0, 1)]
        assert boxes[0].any(axis=(2, 3)).all() and boxes[1].any(axis=(2, 3)).all(), part
        assert not np.array_equal(boxes[0], boxes[1]), part

    # InfoNCE on the gathered batch: each device's projections (its own BN statistics), concatenated.
    def projections(clips):
        out, _ = model.apply({"params": state.params, "batch_stats": state.batch_stats}, jnp.asarray(clips),
                             train=True, rngs={"dropout": jax.random.PRNGKey(0)}, mutable=["batch_stats"])
        return np.asarray(out["projection"], np.float64)

    gathered = np.concatenate([projections(prepared["source"][d]) for d in (0, 1)])  # [B, T, D]
    want = authors_numpy.infonce(gathered.transpose(0, 2, 1), 4, config.loss.infonce_temperature)
    np.testing.assert_allclose(np.asarray(metrics["infonce"]), [want, want], rtol=1e-4)
    per_device = [authors_numpy.infonce(projections(prepared["source"][d]).transpose(0, 2, 1), 4, 0.07)
                  for d in (0, 1)]
    assert abs(np.mean(per_device) - want) > 0.1 * want  # per device it would be another number

    # The replicas stay identical: pmean'ed gradients, averaged running statistics.
    for leaf in jax.tree.leaves((new.params, new.variant_state["temporal_params"], new.variant_state["weights"],
                                 new.batch_stats, new.ema_batch_stats, new.variant_state["temporal_batch_stats"])):
        np.testing.assert_array_equal(np.asarray(leaf[0]), np.asarray(leaf[1]))
    assert float(metrics["triplet"][0]) == float(metrics["triplet"][1])
    assert _max_abs_diff(_row(new.params, 0), state.params) > 0
    assert float(metrics["skipped"][0]) == 0.0
