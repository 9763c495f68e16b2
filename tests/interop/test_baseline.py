"""The authors' PyTorch checkpoint layout → ReIDNet / MultiStageTCN variables, checked with numpy.

A fake checkpoint is built from our own tree by the inverse mapping written here (torch names,
plug-ins as extra entries of the layer Sequentials, Conv3d [O, I, 1, kh, kw] weights), so no torch
is needed. Numerical parity with real PyTorch modules is in tests/models/test_torch_parity.py.
"""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svreid_jax.interop import baseline
from svreid_jax.models import reid, sinet
from svreid_jax.models.discriminators import DomainDiscriminator
from svreid_jax.models.temporal import MultiStageTCN

SHAPE = (1, 4, 96, 48, 3)
BACKBONE = {"depth": 50, "width": 8, "last_stride": 1, "stem_pool_padding": 0, "conv_bias": True}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _shapes(arch, projection=True):
    model = reid.ReIDNet(num_classes=7, backbone=BACKBONE, arch=arch, infonce_projection=projection, disc_hidden=8)
    return model, jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(SHAPE), train=False))


def _torch_index(stage_modules, name):
    """Position of Flax module `name` ('layer2_1' or 'layer2_1_idm') in torch's layer Sequential."""
    order = sorted(stage_modules, key=lambda n: (int(n.split("_")[1]), len(n.split("_"))))
    return order.index(name)


def _fake_checkpoint(shapes, seed=0):
    """What the authors' code would save for this model (values random), and the expected Flax arrays."""
    rng = np.random.default_rng(seed)
    state, expected = {}, {}
    for coll in ("params", "batch_stats"):
        for path, leaf in flax.traverse_util.flatten_dict(shapes[coll]).items():
            top = path[0]
            if top.endswith("discriminator"):
                continue
            flax_value = rng.normal(size=leaf.shape).astype(np.float32)
            if path[-1] == "var":
                flax_value = np.abs(flax_value) + 0.5
            expected[(coll,) + path] = flax_value
            value = flax_value
            if top == "backbone":
                mod = path[1]
                if mod.startswith("layer"):
                    stage = mod.split("_")[0]
                    stage_modules = {p[1] for p in flax.traverse_util.flatten_dict(shapes["params"])
                                     if p[0] == "backbone" and p[1].startswith(stage + "_")}
                    prefix = f"{stage}.{_torch_index(stage_modules, mod)}."
                    sub = path[2].replace("downsample_", "downsample.").replace("reduction_", "reduction.") \
                        .replace("expansion_", "expansion.").replace("kernel_", "kernel.").replace("se_", "se.")
                    torch_mod = prefix + sub
                else:
                    torch_mod = mod
                if path[-1] == "kernel" and leaf.ndim == 4:  # HWIO → Conv3d [O, I, 1, kh, kw]
                    value = flax_value.transpose(3, 2, 0, 1)[:, :, None]
                elif path[-1] == "kernel":  # Dense [in, out] → 1×1 Conv2d (IDM positions) / Conv3d
                    value = flax_value.T.reshape(flax_value.T.shape + ((1, 1) if "thw_" in path[2] else (1, 1, 1)))
            else:
                torch_mod = {"bnneck": "bn"}.get(top, top)
                if path[-1] == "kernel":
                    value = flax_value.T if top == "classifier" else flax_value.T[:, :, None]  # projection Conv1d
            state[f"{torch_mod}.{_LEAF[path[-1]]}"] = value
            if path[-1] == "mean":
                state[f"{torch_mod}.num_batches_tracked"] = np.array(12)
    return state, expected


@pytest.fixture(scope="module")
def sinet_case():
    model, shapes = _shapes("sinet")
    state, expected = _fake_checkpoint(shapes)
    return model, shapes, state, expected


def test_torch_key_layout(sinet_case):
    _, _, state, _ = sinet_case
    # Plug-ins shift the Sequential indices: layer2 = [b0, b1, IDM, b2, b3, IDM], layer3 =
    # [b0, b1, SBM, b2, b3, SBM, b4, b5, SBM].
    for key in ("layer2.2.chl_reduction.0.weight", "layer2.5.thw_reduction.1.running_var", "layer2.4.conv3.bias",
                "layer3.2.kernel.0.weight", "layer3.5.se.3.bias", "layer3.8.kernel.1.weight", "layer3.7.conv1.weight",
                "layer4.0.downsample.0.weight", "bn.running_mean", "classifier.weight", "projection.weight"):
        assert key in state, key
    assert state["layer1.0.conv2.weight"].shape == (8, 8, 1, 3, 3)
    assert state["layer2.2.thw_reduction.0.weight"].shape == (18, 288, 1, 1)


def test_conversion_matches_every_leaf(sinet_case):
    _, shapes, state, expected = sinet_case
    converted = baseline.convert_baseline_checkpoint({"state_dict": {f"module.{k}": v for k, v in state.items()},
                                                      "epoch": 3})
    flat = {(coll,) + p: v for coll in ("params", "batch_stats")
            for p, v in flax.traverse_util.flatten_dict(converted[coll]).items()}
    assert set(flat) == set(expected)
    for path, want in expected.items():
        np.testing.assert_array_equal(flat[path], want, err_msg="/".join(path))
    assert baseline.infer_arch(state) == "sinet"


def test_load_into_model_strictly(sinet_case):
    _, shapes, state, expected = sinet_case
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), flax.core.unfreeze(shapes))
    params, stats = baseline.load_baseline_checkpoint(state, zeros["params"], zeros["batch_stats"])
    np.testing.assert_array_equal(params["backbone"]["layer3_3_sbm"]["se_1"]["kernel"],
                                  expected[("params", "backbone", "layer3_3_sbm", "se_1", "kernel")])
    np.testing.assert_array_equal(stats["bnneck"]["var"], expected[("batch_stats", "bnneck", "var")])
    np.testing.assert_array_equal(params["frame_discriminator"]["fc1"]["kernel"], 0.0)  # not in the file
    # A model without the projection: refuse, unless told to drop it.
    _, plain = _shapes("sinet", projection=False)
    zeros_plain = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), flax.core.unfreeze(plain))
    with pytest.raises(ValueError, match="infonce_projection"):
        baseline.load_baseline_checkpoint(state, zeros_plain["params"], zeros_plain["batch_stats"])
    baseline.load_baseline_checkpoint(state, zeros_plain["params"], zeros_plain["batch_stats"], drop=("projection",))


@pytest.mark.parametrize("arch", ["idnet", "sbnet", "resnet"])
def test_arch_mismatch_is_caught(sinet_case, arch):
    _, shapes, state, _ = sinet_case
    _, other = _shapes(arch)
    other_state, _ = _fake_checkpoint(other)
    assert baseline.infer_arch(other_state) == arch
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), flax.core.unfreeze(shapes))
    with pytest.raises(ValueError, match="not in the checkpoint"):  # the sinet model has plug-ins the file lacks
        baseline.load_baseline_checkpoint(other_state, zeros["params"], zeros["batch_stats"])
    zeros_other = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), flax.core.unfreeze(other))
    with pytest.raises(ValueError, match="does not have"):  # and the reverse
        baseline.load_baseline_checkpoint(state, zeros_other["params"], zeros_other["batch_stats"])


def test_bad_keys(sinet_case):
    _, _, state, _ = sinet_case
    with pytest.raises(ValueError, match="unexpected key"):
        baseline.convert_baseline_checkpoint({**state, "temporal.foo.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="Statistic-Attention"):
        baseline.convert_baseline_checkpoint({**state, "layer2.9.down_channel.weight": np.zeros((16, 64, 1, 1, 1))})
    inflated = dict(state, **{"layer1.0.conv2.weight": np.zeros((8, 8, 3, 3, 3), np.float32)})
    with pytest.raises(ValueError, match="temporal kernel size 3"):
        baseline.convert_baseline_checkpoint(inflated)


def test_idm_layout_against_numpy():
    """A converted IDM computes the reference's formula in torch layout (B, C, T, h, w)."""
    b, c, t, h, w, f = 2, 32, 4, 3, 4, 16
    n = t * h * w
    rng = np.random.default_rng(5)
    state = {"layer2.0.conv1.weight": np.zeros((1, 1, 1, 1, 1), np.float32)}  # a block before the IDM
    for name, shape in (("chl_reduction.0", (c // f, c, 1, 1, 1)), ("thw_reduction.0", (n // f, n, 1, 1)),
                        ("thw_expansion.0", (n, n // f, 1, 1)), ("chl_expansion.0", (c, c // f, 1, 1, 1))):
        state[f"layer2.1.{name}.weight"] = rng.normal(size=shape).astype(np.float32) / np.sqrt(shape[1])
        state[f"layer2.1.{name}.bias"] = rng.normal(size=shape[0]).astype(np.float32)
    for name, ch in (("chl_reduction.1", c // f), ("thw_reduction.1", n // f)):
        state[f"layer2.1.{name}.weight"] = rng.uniform(0.5, 1.5, ch).astype(np.float32)
        state[f"layer2.1.{name}.bias"] = rng.normal(size=ch).astype(np.float32)
        state[f"layer2.1.{name}.running_mean"] = rng.normal(size=ch).astype(np.float32)
        state[f"layer2.1.{name}.running_var"] = rng.uniform(0.5, 2.0, ch).astype(np.float32)
    x = np.maximum(rng.normal(size=(b, c, t, h, w)), 0).astype(np.float32)

    def conv(v, key, axis=1):  # 1×1 conv on `axis`
        wgt, bias = state[f"layer2.1.{key}.weight"], state[f"layer2.1.{key}.bias"]
        wgt = wgt.reshape(wgt.shape[:2])
        out = np.moveaxis(np.tensordot(np.moveaxis(v, axis, -1), wgt.T, axes=1) + bias, -1, axis)
        return out

    def bn(v, key):
        g = lambda leaf: state[f"layer2.1.{key}.{leaf}"].reshape((1, -1) + (1,) * (v.ndim - 2))  # noqa: E731
        return (v - g("running_mean")) / np.sqrt(g("running_var") + 1e-5) * g("weight") + g("bias")

    z = bn(conv(x, "chl_reduction.0"), "chl_reduction.1")  # (b, C', t, h, w)
    zp = z.reshape(b, c // f, n, 1).transpose(0, 2, 1, 3)  # (b, N, C', 1)
    u = conv(bn(conv(zp, "thw_reduction.0"), "thw_reduction.1"), "thw_expansion.0") + zp
    u = u.transpose(0, 2, 1, 3).reshape(b, c // f, t, h, w)
    want = np.maximum(x + conv(u, "chl_expansion.0"), 0)

    converted = baseline.convert_baseline_checkpoint(state)
    variables = {"params": converted["params"]["backbone"]["layer2_0_idm"],
                 "batch_stats": converted["batch_stats"]["backbone"]["layer2_0_idm"]}
    xj = jnp.asarray(x.transpose(0, 2, 3, 4, 1).reshape(b * t, h, w, c))
    got = jax.jit(lambda v, x: sinet.IDM(seq_len=t).apply(v, x, train=False))(variables, xj)
    got = np.asarray(got).reshape(b, t, h, w, c).transpose(0, 4, 1, 2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_temporal_module_conversion():
    k, d = 6, 40
    model = MultiStageTCN(num_classes=k)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 4, d)), train=False))
    rng = np.random.default_rng(1)
    state, expected = {}, {}
    for coll in ("params", "batch_stats"):
        for path, leaf in flax.traverse_util.flatten_dict(shapes[coll]).items():
            value = rng.normal(size=leaf.shape).astype(np.float32)
            expected[(coll,) + path] = value
            mod = ".".join(path[:-1]).replace("stages_", "stages.").replace("layers_", "layers.")
            if path[-1] == "kernel":
                value = value.transpose(2, 1, 0) if value.ndim == 3 else value.T[:, :, None]
            state[f"{mod}.{_LEAF[path[-1]]}"] = value
    state["bn.num_batches_tracked"] = np.array(5)
    disc = {"ad_net_base.0.fc1": (64, 64), "ad_net_cls.0": (2, 64), "ad_net_seq_base.0.fc1": (64, 64),
            "ad_net_seq_cls.0": (2, 64)}
    for mod, shape in disc.items():
        state[f"{mod}.weight"] = rng.normal(size=shape).astype(np.float32)
        state[f"{mod}.bias"] = rng.normal(size=shape[0]).astype(np.float32)
    assert "stages.2.layers.9.conv_dilated.weight" in state and state["stage1.conv_1x1.weight"].shape == (64, d, 1)

    out = baseline.convert_baseline_temporal(state)
    temporal = out["temporal"]
    got = {(coll,) + p: v for coll in ("params", "batch_stats")
           for p, v in flax.traverse_util.flatten_dict(temporal[coll]).items()}
    assert set(got) == set(expected)
    for path, want in expected.items():
        np.testing.assert_array_equal(got[path], want, err_msg="/".join(path))
    disc_shapes = jax.eval_shape(lambda: DomainDiscriminator(64).init(jax.random.key(0), jnp.zeros((3, 64)), beta=0.0,
                                                                        train=False))
    for name, torch_fc2 in (("frame_discriminator", "ad_net_cls.0"), ("clip_discriminator", "ad_net_seq_cls.0")):
        assert jax.tree.map(np.shape, out[name]["params"]) == jax.tree.map(lambda s: s.shape, disc_shapes["params"])
        np.testing.assert_array_equal(out[name]["params"]["fc2"]["kernel"], state[f"{torch_fc2}.weight"].T)
    with pytest.raises(ValueError, match="unexpected key"):
        baseline.convert_baseline_temporal({**state, "stage5.conv_1x1.weight": np.zeros((64, d, 1))})
