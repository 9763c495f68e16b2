"""SINet plug-ins (IDM, SBM), the video backbone hosting them, and ReIDNet with arch='sinet'."""
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svreid_jax.models import backbones, reid, resnet, sinet

# 96×48 frames: stem 48×24 → pool (padding 0) 23×11 → layer2 12×6 → layer3 6×3, so IDM sees
# N = 4·12·6 = 288 positions (→ 18) and SBM a 6×3 map.
SHAPE = (2, 4, 96, 48, 3)
BACKBONE = {"depth": 50, "width": 8, "last_stride": 1, "stem_pool_padding": 0, "conv_bias": True}


def _flat(tree):
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


# ---------------------------------------------------------------------------------------------
# IDM


@pytest.fixture(scope="module")
def idm_setup():
    module = sinet.IDM(seq_len=4)
    x = jax.nn.relu(jnp.asarray(np.random.default_rng(0).normal(size=(8, 6, 4, 32)), jnp.float32))  # B=2, T=4
    variables = jax.jit(lambda x: module.init(jax.random.key(0), x, train=False))(x)
    return module, variables, x


def test_idm_is_identity_at_init(idm_setup):
    module, variables, x = idm_setup
    out = module.apply(variables, x, train=False)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
    out, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


def test_idm_parameters_and_init(idm_setup):
    _, variables, _ = idm_setup
    p = variables["params"]
    # C = 32 → C' = 2; N = T·h·w = 4·6·4 = 96 → 6, taken from the feature map.
    assert {k: v["kernel"].shape for k, v in p.items() if "kernel" in v} == {
        "chl_reduction_0": (32, 2), "thw_reduction_0": (96, 6), "thw_expansion_0": (6, 96), "chl_expansion_0": (2, 32)}
    assert set(variables["batch_stats"]) == {"chl_reduction_1", "thw_reduction_1"}
    for name in ("chl_reduction_1", "thw_reduction_1"):
        np.testing.assert_array_equal(p[name]["scale"], 1.0)
        np.testing.assert_array_equal(p[name]["bias"], 0.0)
    np.testing.assert_array_equal(p["chl_expansion_0"]["kernel"], 0.0)
    np.testing.assert_array_equal(p["chl_expansion_0"]["bias"], 0.0)
    # N(0, √(2/C_out)): the 96×6 kernel has 576 draws with std √(2/6) ≈ 0.577.
    std = float(np.std(p["thw_reduction_0"]["kernel"]))
    assert 0.5 < std < 0.66, std
    # Biases: PyTorch default U(±1/√C_in).
    assert float(np.abs(p["thw_expansion_0"]["bias"]).max()) <= 1 / np.sqrt(6)


def test_idm_shape_errors(idm_setup):
    module, variables, x = idm_setup
    with pytest.raises(ValueError, match="T·h·w = 96"):
        module.apply(variables, x[:, :4], train=False)  # another frame size
    with pytest.raises(ValueError, match="whole number of clips"):
        module.apply(variables, x[:6], train=False)


# ---------------------------------------------------------------------------------------------
# SBM


@pytest.fixture(scope="module")
def sbm_setup():
    module = sinet.SBM(seq_len=4, split_pos=1)
    x = jax.nn.relu(jnp.asarray(np.random.default_rng(1).normal(size=(8, 5, 4, 16)), jnp.float32))
    variables = jax.jit(lambda x: module.init(jax.random.key(0), x, train=False))(x)
    return module, variables, x


def test_sbm_shapes_and_names(sbm_setup):
    module, variables, x = sbm_setup
    assert {k: v["kernel"].shape for k, v in variables["params"].items() if "kernel" in v} == {
        "kernel_0": (16, 9), "se_1": (16, 4), "se_3": (4, 16)}
    assert set(variables["batch_stats"]) == {"kernel_1"}
    out = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
    assert not np.allclose(out, x)


def test_sbm_eight_frames_are_two_halves(sbm_setup):
    module, variables, x = sbm_setup
    x2 = jnp.flip(x, axis=1)  # a second clip
    clips = jnp.concatenate([x.reshape(2, 4, 5, 4, 16), x2.reshape(2, 4, 5, 4, 16)], axis=1).reshape(16, 5, 4, 16)

    @jax.jit
    def run(clips, x, x2):
        out8 = sinet.SBM(seq_len=8, split_pos=1).apply(variables, clips, train=False)
        return out8, module.apply(variables, x, train=False), module.apply(variables, x2, train=False)

    out8, out_a, out_b = run(clips, x, x2)
    out8 = out8.reshape(2, 8, 5, 4, 16)
    np.testing.assert_allclose(out8[:, :4], out_a.reshape(2, 4, 5, 4, 16), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out8[:, 4:], out_b.reshape(2, 4, 5, 4, 16), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seq_len", [2, 3, 6])
def test_sbm_needs_four_frames(sbm_setup, seq_len):
    _, variables, _ = sbm_setup
    x = jnp.ones((2 * seq_len, 5, 4, 16))
    with pytest.raises(ValueError, match="4 frames"):
        sinet.SBM(seq_len=seq_len).apply(variables, x, train=False)


def test_sbm_small_map_and_uniform_input(sbm_setup):
    module, variables, _ = sbm_setup
    with pytest.raises(ValueError, match="3×3"):
        module.apply(variables, jnp.ones((8, 2, 4, 16)), train=False)
    # A constant clip gives a uniform response: no position suppressed. The reference divides 0 by
    # 0 there; here the output stays finite, and so does the gradient.
    const = jnp.ones((8, 5, 4, 16))
    out, grad = jax.jit(jax.value_and_grad(lambda x: jnp.sum(module.apply(variables, x, train=False))))(const)
    assert bool(jnp.all(jnp.isfinite(out)))
    assert bool(jnp.all(jnp.isfinite(grad)))


# ---------------------------------------------------------------------------------------------
# VideoResNet (abstract: no compile)


def _backbone_shapes(arch, seq_len=4, depth=50, shape=(8, 96, 48, 3)):
    net = sinet.video_resnet(arch, seq_len, depth, width=8, stem_pool_padding=0, conv_bias=True)
    return jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros(shape), train=False))


@pytest.mark.parametrize("arch, plugins", [
    ("sinet", {"layer2_1_idm", "layer2_3_idm", "layer3_1_sbm", "layer3_3_sbm", "layer3_5_sbm"}),
    ("sbnet", {"layer3_1_sbm", "layer3_3_sbm", "layer3_5_sbm"}),
    ("idnet", {"layer2_1_idm", "layer2_3_idm"}),
    ("resnet", set()),
])
def test_video_resnet_trees(arch, plugins):
    variables = _backbone_shapes(arch)
    plain = jax.eval_shape(lambda: resnet.resnet(50, width=8, stem_pool_padding=0, conv_bias=True).init(
        jax.random.key(0), jnp.zeros((8, 96, 48, 3)), train=False))
    assert {k for k in variables["params"] if k.endswith(("_idm", "_sbm"))} == plugins
    # The ResNet part is the torchvision-named tree, unchanged, so ImageNet weights still map.
    for coll in ("params", "batch_stats"):
        flat, ref = _flat(variables[coll]), _flat(plain[coll])
        assert {p: v.shape for p, v in flat.items() if not p[0].endswith(("_idm", "_sbm"))} == \
            {p: v.shape for p, v in ref.items()}
    if "layer2_1_idm" in plugins:
        assert variables["params"]["layer2_1_idm"]["thw_reduction_0"]["kernel"].shape == (4 * 12 * 6, 18)


def test_arch_errors():
    with pytest.raises(ValueError, match="unknown arch"):
        sinet.video_resnet("sanet", 4)
    with pytest.raises(ValueError, match="stage sizes"):
        sinet.video_resnet("sinet", 4, 18)
    with pytest.raises(ValueError, match="seq_len 4"):
        sinet.video_resnet("sbnet", 6)
    sinet.video_resnet("idnet", 6)  # IDM alone takes any T
    with pytest.raises(ValueError, match="arch"):
        reid.ReIDNet(num_classes=3, backbone={"depth": "tiny"}, arch="sinet")
    with pytest.raises(ValueError, match="arch"):
        reid.ReIDNet(num_classes=3, backbone={"depth": 50}, arch="bogus")


# ---------------------------------------------------------------------------------------------
# ReIDNet(arch='sinet') end to end


@pytest.fixture(scope="module")
def sinet_model():
    model = reid.ReIDNet(num_classes=5, backbone=BACKBONE, arch="sinet", infonce_projection=True, disc_hidden=8)
    # An RBG key compiles the ~170-parameter init faster than threefry on CPU.
    params, batch_stats = reid.init_model(model, jax.random.key(0, impl="rbg"), SHAPE)
    video = jnp.asarray(np.random.default_rng(0).normal(size=SHAPE), jnp.float32)
    return model, params, batch_stats, video


@pytest.mark.slow  # shares the compiled SINet model (about 25 s); the default stage keeps its 15-minute budget
def test_sinet_reidnet_eval(sinet_model):
    model, params, batch_stats, video = sinet_model
    assert set(params) == {"backbone", "bnneck", "classifier", "projection", "frame_discriminator",
                           "clip_discriminator"}
    assert params["projection"]["kernel"].shape == (256, 256)
    np.testing.assert_array_equal(params["projection"]["bias"], 0.0)
    std = float(np.std(params["projection"]["kernel"]))  # Kaiming normal, fan_out 256: √(2/256) ≈ 0.088
    assert 0.08 < std < 0.097, std
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))({"params": params, "batch_stats": batch_stats}, video)
    assert set(out) == set(reid.OUTPUT_KEYS) | {"projection"}
    assert out["projection"].shape == (2, 4, 256) and out["frame_embeddings"].shape == (2, 4, 256)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in out.values())
    # Eval projection = Dense(BN-neck with running statistics applied to each frame).
    bn_p, bn_s, proj = params["bnneck"], batch_stats["bnneck"], params["projection"]
    frames_bn = (out["frame_embeddings"] - bn_s["mean"]) / np.sqrt(bn_s["var"] + 1e-5) * bn_p["scale"] + bn_p["bias"]
    np.testing.assert_allclose(out["projection"], frames_bn @ proj["kernel"] + proj["bias"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # shares the compiled SINet model (about 25 s); the default stage keeps its 15-minute budget
def test_sinet_reidnet_train_updates_plugin_stats(sinet_model):
    model, params, batch_stats, video = sinet_model
    out, new_vars = jax.jit(lambda v, x: model.apply(v, x, train=True, grl_beta=0.5,
                                                     rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"]))(
        {"params": params, "batch_stats": batch_stats}, video)
    new = new_vars["batch_stats"]
    for path in (("backbone", "layer2_1_idm", "thw_reduction_1", "var"),
                 ("backbone", "layer3_5_sbm", "kernel_1", "mean"), ("bnneck", "mean")):
        old_leaf, new_leaf = batch_stats, new
        for k in path:
            old_leaf, new_leaf = old_leaf[k], new_leaf[k]
        assert not np.allclose(old_leaf, new_leaf), path
    # The projection does not add BN-neck updates: one momentum step from the clip batch mean.
    np.testing.assert_allclose(new["bnneck"]["mean"], 0.9 * batch_stats["bnneck"]["mean"] +
                               0.1 * np.asarray(out["clip_embedding"]).mean(0), rtol=1e-5, atol=1e-6)
    # In train mode the projection normalises frames with their own batch statistics.
    frames = np.asarray(out["frame_embeddings"]).reshape(-1, 256)
    frames_bn = (frames - frames.mean(0)) / np.sqrt(frames.var(0) + 1e-5) * params["bnneck"]["scale"] + \
        params["bnneck"]["bias"]
    proj = params["projection"]
    np.testing.assert_allclose(np.asarray(out["projection"]).reshape(-1, 256),
                               frames_bn @ proj["kernel"] + proj["bias"], rtol=1e-3, atol=1e-3)


@pytest.mark.slow  # shares the compiled SINet model (about 25 s); the default stage keeps its 15-minute budget
def test_sinet_reidnet_rejects_other_clip_lengths(sinet_model):
    model, params, batch_stats, _ = sinet_model
    with pytest.raises(ValueError):
        jax.eval_shape(lambda: model.apply({"params": params, "batch_stats": batch_stats},
                                           jnp.zeros((2, 3, 96, 48, 3)), train=False))


def test_default_arch_unchanged():
    """arch='resnet' and no projection: exactly the historical tree and outputs."""
    model = reid.ReIDNet(num_classes=3, backbone={"depth": "tiny"})
    assert model.arch == "resnet" and not model.infonce_projection
    out, v = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 4, 32, 16, 3)),
                                                           train=False))
    assert set(out) == set(reid.OUTPUT_KEYS)
    assert set(v["params"]) == {"backbone", "bnneck", "classifier", "frame_discriminator", "clip_discriminator"}


def test_imagenet_weights_load_into_sinet_backbone(tmp_path):
    """A torchvision ResNet-50 state_dict (.npz) loads into the SINet backbone: the ResNet leaves come
    from the file, the plug-ins and the reference's conv biases keep their init."""
    from svreid_jax.interop import torchvision as tv

    model = reid.ReIDNet(num_classes=5, backbone=BACKBONE, arch="sinet", disc_hidden=8)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + SHAPE[1:]), train=False))
    plain = jax.eval_shape(lambda: resnet.resnet(50, width=8).init(jax.random.key(0), jnp.zeros((1, 64, 32, 3)),
                                                                  train=False))
    rng = np.random.default_rng(0)
    names = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    state = {}
    for coll in ("params", "batch_stats"):
        for path, leaf in _flat(plain[coll]).items():
            # 'layer3_5/downsample_0' → 'layer3.5.downsample.0'
            module = re.sub(r"^layer(\d)_(\d+)", r"layer\1.\2", ".".join(path[:-1])).replace("_", ".")
            value = rng.normal(size=leaf.shape).astype(np.float32)
            state[f"{module}.{names[path[-1]]}"] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
    assert "layer3.5.conv2.weight" in state and "layer2.0.downsample.1.running_var" in state
    np.savez(tmp_path / "r50.npz", **state)
    zeros = jax.tree.map(lambda s: np.full(s.shape, 7.0, s.dtype), flax.core.unfreeze(shapes))
    params, stats = tv.load_backbone_weights(str(tmp_path / "r50.npz"), zeros["params"], zeros["batch_stats"])
    np.testing.assert_array_equal(params["backbone"]["layer3_5"]["conv2"]["kernel"],
                                  state["layer3.5.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(stats["backbone"]["layer2_0"]["downsample_1"]["var"],
                                  state["layer2.0.downsample.1.running_var"])
    np.testing.assert_array_equal(params["backbone"]["layer3_5"]["conv2"]["bias"], 7.0)  # not in torchvision
    np.testing.assert_array_equal(params["backbone"]["layer2_1_idm"]["chl_reduction_0"]["kernel"], 7.0)


def test_old_arch_name_still_builds_the_plain_resnet(caplog):
    """'resnet50' (the old name of the plain ResNet of any depth) resolves to 'resnet' with a warning."""
    backbones._warned.discard("resnet50")
    with caplog.at_level("WARNING"):
        model = reid.ReIDNet(num_classes=3, backbone={"depth": "tiny"}, arch="resnet50")
    assert model.arch == "resnet"
    assert "now called 'resnet'" in caplog.text

