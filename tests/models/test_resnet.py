"""ResNet backbone: torchvision names and parameter counts (eval_shape, no compile), spatial sizes,
and a numpy oracle for one block in eval mode."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from svreid_jax.models import resnet as R


def _abstract_vars(model, shape=(1, 64, 32, 3)):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _flat(tree):
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def test_resnet50_param_counts_match_torchvision():
    no_fc = _abstract_vars(R.resnet(50))
    with_fc = _abstract_vars(R.resnet(50, include_fc=True))
    assert _count(no_fc["params"]) == 23_508_032
    assert _count(with_fc["params"]) == 25_557_032
    # torchvision: 320 state_dict entries − 53 num_batches_tracked = 267 leaves.
    assert len(jax.tree.leaves(with_fc)) == 267
    assert R.feature_dim(50) == 2048 and R.feature_dim("tiny") == 64 and R.feature_dim(18, 16) == 128


def test_resnet50_torchvision_names_and_shapes():
    v = _abstract_vars(R.resnet(50, include_fc=True))
    params, stats = _flat(v["params"]), _flat(v["batch_stats"])
    expect = {
        "conv1/kernel": (7, 7, 3, 64),
        "bn1/scale": (64,),
        "layer1_0/conv1/kernel": (1, 1, 64, 64),
        "layer1_0/conv2/kernel": (3, 3, 64, 64),
        "layer1_0/conv3/kernel": (1, 1, 64, 256),
        "layer1_0/downsample_0/kernel": (1, 1, 64, 256),
        "layer1_0/downsample_1/scale": (256,),
        "layer3_5/bn3/bias": (1024,),
        "layer4_0/downsample_0/kernel": (1, 1, 1024, 2048),
        "layer4_2/conv3/kernel": (1, 1, 512, 2048),
        "fc/kernel": (2048, 1000),
        "fc/bias": (1000,),
    }
    for k, shape in expect.items():
        assert params[k].shape == shape, k
    assert stats["layer4_2/bn3/mean"].shape == (2048,) and stats["bn1/var"].shape == (64,)
    # Downsample only on the first block of each stage; no conv biases by default.
    assert not any(k.startswith("layer1_1/downsample") for k in params)
    assert not any(k.endswith("conv1/bias") or k.endswith("downsample_0/bias") for k in params)
    blocks = sorted({k.split("/")[0] for k in params if k.startswith("layer")})
    assert len(blocks) == 16 and "layer3_5" in blocks and "layer4_3" not in blocks
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(v))


def test_basic_block_names():
    v = _abstract_vars(R.resnet(18))
    p = v["params"]
    assert set(p["layer1_0"]) == {"conv1", "bn1", "conv2", "bn2"}
    assert set(p["layer2_0"]) == {"conv1", "bn1", "conv2", "bn2", "downsample_0", "downsample_1"}
    assert p["layer2_0"]["conv1"]["kernel"].shape == (3, 3, 64, 128)
    assert _count(_abstract_vars(R.resnet(18, include_fc=True))["params"]) == 11_689_512  # torchvision


def _stage_shapes(model, shape=(1, 256, 128, 3)):
    def f():
        v = model.init(jax.random.key(0), jnp.zeros(shape), train=False)
        return model.apply(v, jnp.zeros(shape), train=False, capture_intermediates=True,
                           mutable=["intermediates"])

    out, inter = jax.eval_shape(f)
    inter = inter["intermediates"]
    sizes = {"stem": inter["bn1"]["__call__"][0].shape[1:3]}
    for s in range(1, 5):
        last = max(k for k in inter if k.startswith(f"layer{s}_"))
        sizes[f"layer{s}"] = inter[last]["__call__"][0].shape[1:3]
    sizes["pool"] = inter["layer1_0"]["__call__"][0].shape[1:3]  # layer1 keeps the pool's size
    return out.shape, sizes


def test_stem_pool_padding_and_last_stride_sizes():
    out, sizes = _stage_shapes(R.resnet(50, stem_pool_padding=0, last_stride=1))
    assert out == (1, 16, 8, 2048)
    assert sizes == {"stem": (128, 64), "pool": (63, 31), "layer1": (63, 31), "layer2": (32, 16),
                     "layer3": (16, 8), "layer4": (16, 8)}
    out, sizes = _stage_shapes(R.resnet(50, stem_pool_padding=1, last_stride=1))
    assert sizes["pool"] == (64, 32) and out == (1, 16, 8, 2048)
    out, _ = _stage_shapes(R.resnet(50, stem_pool_padding=1, last_stride=2))
    assert out == (1, 8, 4, 2048)
    out, _ = _stage_shapes(R.resnet("tiny", last_stride=2), shape=(3, 32, 16, 3))
    assert out == (3, 1, 1, 64)


def test_conv_bias_adds_one_bias_per_conv_output_channel():
    plain = _flat(_abstract_vars(R.resnet(50))["params"])
    biased = _flat(_abstract_vars(R.resnet(50, conv_bias=True))["params"])
    conv_kernels = {k: v for k, v in plain.items() if k.endswith("/kernel")}
    assert len(conv_kernels) == 53
    for k, v in conv_kernels.items():
        assert biased[k[: -len("kernel")] + "bias"].shape == (v.shape[-1],)
    assert _count(biased) - _count(plain) == sum(v.shape[-1] for v in conv_kernels.values())


def test_compute_dtype_and_fc_logits():
    m = R.resnet("tiny", width=16, include_fc=True, num_fc_classes=7, dtype=jnp.bfloat16)
    out, v = jax.eval_shape(lambda: m.init_with_output(jax.random.key(0), jnp.zeros((2, 32, 16, 3)), train=False))
    assert out.shape == (2, 7) and out.dtype == jnp.bfloat16
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(v))
    with pytest.raises(ValueError):
        R.resnet(42)


# --------------------------------------------------------------------------------------------
# numpy oracle


def _np_conv(x, w, b, stride, pad):
    """x [N,H,W,C], w [kh,kw,C,O] (HWIO), symmetric zero padding, cross-correlation like torch."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = w.shape[:2]
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[3]), np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i: i + stride * (ho - 1) + 1: stride, j: j + stride * (wo - 1) + 1: stride, :]
            out += patch @ w[i, j]
    return out + (0.0 if b is None else b)


def _np_bn(x, p, s, eps=1e-5):
    return (x - s["mean"]) / np.sqrt(s["var"] + eps) * p["scale"] + p["bias"]


def _np_basic_block(x, p, s, stride):
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    y = relu(_np_bn(_np_conv(x, p["conv1"]["kernel"], p["conv1"].get("bias"), stride, 1), p["bn1"], s["bn1"]))
    y = _np_bn(_np_conv(y, p["conv2"]["kernel"], p["conv2"].get("bias"), 1, 1), p["bn2"], s["bn2"])
    sc = x
    if "downsample_0" in p:
        sc = _np_conv(x, p["downsample_0"]["kernel"], p["downsample_0"].get("bias"), stride, 0)
        sc = _np_bn(sc, p["downsample_1"], s["downsample_1"])
    return relu(y + sc)


@pytest.mark.parametrize("stride,conv_bias,in_ch", [(2, True, 4), (1, False, 8)])
def test_basic_block_matches_numpy_oracle(stride, conv_bias, in_ch):
    block = R.BasicBlock(8, stride=stride, conv_bias=conv_bias)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 7, in_ch)).astype(np.float32)  # odd sizes exercise the padding
    variables = jax.tree.map(np.asarray, block.init(jax.random.key(1), jnp.asarray(x), train=False))
    assert ("downsample_0" in variables["params"]) == (stride != 1 or in_ch != 8)
    # Random BN parameters and running statistics so eval-mode BN is not the identity.
    variables = jax.tree_util.tree_map_with_path(
        lambda path, a: (rng.uniform(0.5, 1.5, a.shape) if path[-1].key == "var"
                         else rng.normal(size=a.shape) * 0.3).astype(np.float32),
        variables)
    got = block.apply(variables, jnp.asarray(x), train=False)
    want = _np_basic_block(x.astype(np.float64), variables["params"], variables["batch_stats"], stride)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # compiles the backbone and its gradient twice (with and without remat)
def test_remat_keeps_parameters_outputs_and_gradients():
    from svreid_jax.models import reid

    def build(remat):
        return reid.ReIDNet(num_classes=5, backbone={"depth": "tiny", "width": 8, "remat": remat},
                            disc_dropout=0.0)

    video = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 32, 16, 3))
    params, stats = reid.init_model(build(False), jax.random.PRNGKey(0), video.shape)
    remat_params, _ = reid.init_model(build(True), jax.random.PRNGKey(0), video.shape)
    assert jax.tree.structure(params) == jax.tree.structure(remat_params)

    def loss(p, model):
        out, _ = model.apply({"params": p, "batch_stats": stats}, video, train=True, grl_beta=0.5,
                             mutable=["batch_stats"])
        return jnp.sum(out["logits"] ** 2) + jnp.sum(out["clip_domain_logits"])

    # The rematted model really checkpoints its blocks (and the plain one does not).
    assert "remat2" in str(jax.make_jaxpr(jax.grad(loss), static_argnums=1)(params, build(True)))
    assert "remat2" not in str(jax.make_jaxpr(jax.grad(loss), static_argnums=1)(params, build(False)))
    plain = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, build(False))
    rematted = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, build(True))
    np.testing.assert_allclose(rematted[0], plain[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(rematted[1]), jax.tree.leaves(plain[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
