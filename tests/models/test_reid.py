"""ReIDNet: outputs, eval determinism, BN statistics, and the reversed domain gradient."""
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import authors_numpy
from svreid_jax.models import reid

SHAPE = (2, 4, 32, 16, 3)  # [B, T, H, W, 3]
NUM_CLASSES = 5
KEYS = {"frame_embeddings", "clip_embedding", "bn_embedding", "logits", "frame_domain_logits",
        "clip_domain_logits"}


@pytest.fixture(scope="module")
def setup():
    model = reid.ReIDNet(num_classes=NUM_CLASSES, backbone={"depth": "tiny"}, disc_hidden=16)
    params, batch_stats = reid.init_model(model, jax.random.key(0), SHAPE)
    video = jnp.asarray(np.random.default_rng(0).normal(size=SHAPE), jnp.float32)
    return model, params, batch_stats, video


def _shapes(d=64):
    b, t = SHAPE[:2]
    return {"frame_embeddings": (b, t, d), "clip_embedding": (b, d), "bn_embedding": (b, d),
            "logits": (b, NUM_CLASSES), "frame_domain_logits": (b, t, 2), "clip_domain_logits": (b, 2)}


def test_init_tree(setup):
    model, params, batch_stats, _ = setup
    assert set(params) == {"backbone", "bnneck", "classifier", "frame_discriminator", "clip_discriminator"}
    assert set(batch_stats) == {"backbone", "bnneck"}
    assert params["backbone"]["layer4_0"]["downsample_0"]["kernel"].shape == (1, 1, 32, 64)
    assert params["classifier"]["kernel"].shape == (64, NUM_CLASSES)
    assert np.all(np.asarray(params["classifier"]["bias"]) == 0) and np.all(np.asarray(params["bnneck"]["bias"]) == 0)
    scale = np.asarray(params["bnneck"]["scale"])
    assert abs(scale.mean() - 1.0) < 0.02 and 0.0 < scale.std() < 0.05
    assert reid.embedding_dim(model.backbone) == 64
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((params, batch_stats)))


def test_eval_outputs_deterministic_and_consistent(setup):
    model, params, batch_stats, video = setup
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    variables = {"params": params, "batch_stats": batch_stats}
    out = apply(variables, video)
    again = apply(variables, video)
    assert set(out) == KEYS
    assert {k: v.shape for k, v in out.items()} == _shapes()
    for k in KEYS:
        assert out[k].dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(again[k]))
    # clip = mean over time; BN-neck with running stats; classifier on the BN-neck output.
    np.testing.assert_allclose(out["clip_embedding"], out["frame_embeddings"].mean(1), rtol=1e-6)
    bn_p, bn_s = params["bnneck"], batch_stats["bnneck"]
    want_bn = (out["clip_embedding"] - bn_s["mean"]) / np.sqrt(bn_s["var"] + 1e-5) * bn_p["scale"] + bn_p["bias"]
    np.testing.assert_allclose(out["bn_embedding"], want_bn, rtol=1e-5, atol=1e-5)
    cls = params["classifier"]
    np.testing.assert_allclose(out["logits"], out["bn_embedding"] @ cls["kernel"] + cls["bias"], rtol=1e-5, atol=1e-6)
    # Max pooling over ReLU maps: embeddings are non-negative.
    assert float(out["frame_embeddings"].min()) >= 0.0


def test_train_mode_updates_batch_stats_and_uses_dropout(setup):
    model, params, batch_stats, video = setup

    @jax.jit
    def fwd(key):
        return model.apply({"params": params, "batch_stats": batch_stats}, video, train=True, grl_beta=0.5,
                           rngs={"dropout": key}, mutable=["batch_stats"])

    out, new_vars = fwd(jax.random.key(1))
    out2, _ = fwd(jax.random.key(2))
    assert set(out) == KEYS and {k: v.shape for k, v in out.items()} == _shapes()
    new_stats = new_vars["batch_stats"]
    for path in (("bnneck", "mean"), ("bnneck", "var"), ("backbone", "bn1", "mean"),
                 ("backbone", "layer4_0", "bn2", "var")):
        old, new = batch_stats, new_stats
        for k in path:
            old, new = old[k], new[k]
        assert not np.allclose(old, new), path
    # Flax momentum 0.9: new running mean = 0.9·old + 0.1·batch mean of the clip embeddings.
    batch_mean = np.asarray(out["clip_embedding"]).mean(0)
    np.testing.assert_allclose(new_stats["bnneck"]["mean"], 0.9 * batch_stats["bnneck"]["mean"] + 0.1 * batch_mean,
                               rtol=1e-5, atol=1e-6)
    # Dropout only touches the discriminators: embeddings agree, domain logits differ across rngs.
    np.testing.assert_array_equal(np.asarray(out["bn_embedding"]), np.asarray(out2["bn_embedding"]))
    assert not np.allclose(out["clip_domain_logits"], out2["clip_domain_logits"])


def test_domain_gradient_is_reversed_into_backbone(setup):
    """d(domain loss)/dθ: the discriminator gradient ignores β; the backbone's is −β × the natural
    gradient (β = −1 gives the natural one), computed under jit+NamedSharding (1-device mesh)."""
    model, params, batch_stats, video = setup
    labels = jnp.array([0, 1])  # sample 0 "source", sample 1 "target"

    def domain_loss(p, beta):
        out, _ = model.apply({"params": p, "batch_stats": batch_stats}, video, train=True, grl_beta=beta,
                             rngs={"dropout": jax.random.key(7)}, mutable=["batch_stats"])
        frame_lp = jax.nn.log_softmax(out["frame_domain_logits"])
        clip_lp = jax.nn.log_softmax(out["clip_domain_logits"])
        frame_ce = -jnp.mean(jnp.take_along_axis(frame_lp, labels[:, None, None], -1))
        clip_ce = -jnp.mean(jnp.take_along_axis(clip_lp, labels[:, None], -1))
        return frame_ce + clip_ce

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    repl = NamedSharding(mesh, P())
    grad = jax.jit(jax.grad(domain_loss), in_shardings=(repl, repl), out_shardings=repl)
    p = jax.device_put(params, repl)
    g = {beta: jax.device_get(grad(p, jnp.float32(beta))) for beta in (-1.0, 0.0, 0.5, 1.0)}

    natural = g[-1.0]["backbone"]
    leaves = jax.tree.leaves(natural)
    assert sum(float(np.abs(x).sum()) for x in leaves) > 0
    for beta in (0.0, 0.5, 1.0):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, -beta * b, rtol=1e-4, atol=1e-7),
                     g[beta]["backbone"], natural)
        for name in ("frame_discriminator", "clip_discriminator"):
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8),
                         g[beta][name], g[-1.0][name])
    assert float(np.abs(g[1.0]["frame_discriminator"]["fc2"]["kernel"]).sum()) > 0
    # The identity head is not on the domain path.
    assert all(float(np.abs(x).sum()) == 0 for x in jax.tree.leaves(g[1.0]["classifier"]))


def test_config_variants_build_abstractly():
    cfg = ml_collections.ConfigDict({"depth": "tiny", "width": 16, "last_stride": 2, "stem_pool_padding": 0,
                                     "conv_bias": True})
    model = reid.ReIDNet(num_classes=NUM_CLASSES, backbone=cfg, frame_pooling="avg", dtype=jnp.bfloat16)
    assert isinstance(model.backbone, flax.core.FrozenDict)
    hash(model)
    out, v = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros(SHAPE), train=False))
    assert {k: x.shape for k, x in out.items()} == _shapes(128)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(out))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(v))
    assert "bias" in v["params"]["backbone"]["conv1"]
    with pytest.raises(ValueError):
        reid.ReIDNet(num_classes=3, backbone={"depth": 50, "widht": 8})


def test_temporal_average_with_and_without_mask():
    from svreid_jax.models.temporal import TemporalAverage, temporal_average

    frames = jnp.arange(24, dtype=jnp.float32).reshape(2, 4, 3)
    np.testing.assert_allclose(temporal_average(frames), np.asarray(frames).mean(1))
    mask = jnp.array([[1, 1, 0, 0], [0, 0, 0, 0]])
    got = np.asarray(temporal_average(frames, mask))
    np.testing.assert_allclose(got[0], np.asarray(frames)[0, :2].mean(0))
    np.testing.assert_array_equal(got[1], np.zeros(3))
    np.testing.assert_allclose(TemporalAverage().apply({}, frames), np.asarray(frames).mean(1))
    with pytest.raises(ValueError):
        temporal_average(frames[0])


@pytest.mark.parametrize("projection", [False, True])
def test_bnneck_torch_stats_follow_the_authors_three_calls(setup, projection):
    _, params, batch_stats, video = setup
    model = reid.ReIDNet(num_classes=NUM_CLASSES, backbone={"depth": "tiny"}, disc_hidden=16,
                         infonce_projection=projection, bnneck_torch_stats=True)
    plain = reid.ReIDNet(num_classes=NUM_CLASSES, backbone={"depth": "tiny"}, disc_hidden=16,
                         infonce_projection=projection)
    variables = dict(zip(("params", "batch_stats"), reid.init_model(model, jax.random.key(0), SHAPE)))
    # Start from non-trivial running statistics so the momentum weighting shows.
    start = {"mean": jnp.full((64,), 0.3), "var": jnp.full((64,), 2.0)}
    variables["batch_stats"] = {**variables["batch_stats"], "bnneck": start}
    run = jax.jit(lambda m, v: m.apply(v, video, train=True, rngs={"dropout": jax.random.key(1)},
                                        mutable=["batch_stats"]), static_argnums=0)
    out, new = run(model, variables)
    out_plain, new_plain = run(plain, variables)
    frames = np.asarray(out["frame_embeddings"]).reshape(-1, 64)  # the B·T frames
    clips = np.asarray(out["clip_embedding"])
    # The authors' forward: mid = bn(frames), f = bn(clips), and with InfoNCE bn(frames) again.
    calls = [frames, clips, frames] if projection else [frames, clips]
    want_mean, want_var = authors_numpy.batch_norm_running_stats(np.full(64, 0.3), np.full(64, 2.0), calls)
    np.testing.assert_allclose(new["batch_stats"]["bnneck"]["mean"], want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["batch_stats"]["bnneck"]["var"], want_var, rtol=1e-5, atol=1e-6)
    # The default: one Flax update from the clips, biased variance.
    np.testing.assert_allclose(new_plain["batch_stats"]["bnneck"]["mean"], 0.9 * 0.3 + 0.1 * clips.mean(0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_plain["batch_stats"]["bnneck"]["var"], 0.9 * 2.0 + 0.1 * clips.var(0),
                               rtol=1e-5, atol=1e-6)
    # Only the running statistics differ: outputs and the backbone's statistics are the same.
    for key in out:
        np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(out_plain[key]))
    for a, b in zip(jax.tree.leaves(new["batch_stats"]["backbone"]), jax.tree.leaves(new_plain["batch_stats"]["backbone"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The two rules are measurably different (the unbiased frame variances weigh in).
    assert not np.allclose(want_var, 0.9 * 2.0 + 0.1 * clips.var(0), rtol=1e-3)
