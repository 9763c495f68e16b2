"""torchvision state_dict → Linen layout, checked with numpy (no torch needed)."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svreid_jax.interop import torchvision as tv
from svreid_jax.models import resnet, reid


def _fake_torchvision_state_dict(depth="tiny", width=8, seed=0):
    """Build what torchvision would store for our ResNet: torch names, OIHW convs, (out, in) linears."""
    net = resnet.resnet(depth, width=width, include_fc=True, num_fc_classes=5)
    shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 16, 3)), train=False))
    rng = np.random.default_rng(seed)
    state = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in flax.traverse_util.flatten_dict(shapes[collection]).items():
            module = ".".join(path[:-1])
            module = module.replace("_", ".") if module.startswith("layer") else module
            name = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                    "var": "running_var"}[path[-1]]
            shape = leaf.shape
            if path[-1] == "kernel":
                shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
            value = rng.normal(size=shape).astype(np.float32)
            if name == "running_var":
                value = np.abs(value) + 0.5
            state[f"{module}.{name}"] = value
        state.update({f"{k.rsplit('.', 1)[0]}.num_batches_tracked": np.array(3) for k in list(state)
                      if k.endswith("running_mean")})
    return net, state


def test_layout_conversion_round_trip():
    net, state = _fake_torchvision_state_dict()
    assert "layer1.0.conv1.weight" in state and "layer2.0.downsample.0.weight" in state
    variables = tv.convert_torchvision_resnet(state, include_fc=True)
    flat = flax.traverse_util.flatten_dict(variables["params"])
    np.testing.assert_array_equal(flat[("layer2_0", "downsample_0", "kernel")],
                                  state["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(flat[("fc", "kernel")], state["fc.weight"].T)
    np.testing.assert_array_equal(flat[("bn1", "scale")], state["bn1.weight"])
    stats = flax.traverse_util.flatten_dict(variables["batch_stats"])
    np.testing.assert_array_equal(stats[("layer1_0", "bn2", "var")], state["layer1.0.bn2.running_var"])
    # Exactly the model's tree: the converted variables apply without complaint.
    out = net.apply(variables, jnp.ones((1, 32, 16, 3)), train=False)
    assert out.shape == (1, 5)


def test_converted_conv_matches_numpy_convolution():
    # The stem conv alone: torch cross-correlation in NCHW with OIHW weights, padding 3, stride 2.
    net, state = _fake_torchvision_state_dict()
    w = state["conv1.weight"]  # [O, I, 7, 7]
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 8)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (0, 0), (3, 3), (3, 3)))
    oh, ow = (16 + 6 - 7) // 2 + 1, (8 + 6 - 7) // 2 + 1
    expected = np.zeros((1, w.shape[0], oh, ow), np.float32)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, 2 * i:2 * i + 7, 2 * j:2 * j + 7]
            expected[:, :, i, j] = np.einsum("bihw,oihw->bo", patch, w)
    kernel = tv.convert_torchvision_resnet(state)["params"]["conv1"]["kernel"]
    got = jax.lax.conv_general_dilated(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(kernel), (2, 2),
                                       ((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), expected, rtol=1e-4, atol=1e-4)


def test_load_backbone_weights_from_npz(tmp_path):
    _, state = _fake_torchvision_state_dict()
    path = tmp_path / "tiny.npz"
    np.savez(path, **state)
    model = reid.ReIDNet(num_classes=3, backbone={"depth": "tiny", "width": 8})
    params, stats = reid.init_model(model, jax.random.PRNGKey(0), (1, 2, 32, 16, 3))
    params, stats = tv.load_backbone_weights(str(path), params, stats)
    np.testing.assert_array_equal(params["backbone"]["layer4_0"]["conv2"]["kernel"],
                                  state["layer4.0.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(stats["backbone"]["bn1"]["mean"], state["bn1.running_mean"])


def test_shape_mismatch_names_the_leaf(tmp_path):
    _, state = _fake_torchvision_state_dict(width=16)
    path = tmp_path / "wide.npz"
    np.savez(path, **state)
    model = reid.ReIDNet(num_classes=3, backbone={"depth": "tiny", "width": 8})
    params, stats = reid.init_model(model, jax.random.PRNGKey(0), (1, 2, 32, 16, 3))
    with pytest.raises(ValueError, match=r"wide.npz: 'bn1/bias' has shape \(16,\) in the file but \(8,\) in the model"):
        tv.load_backbone_weights(str(path), params, stats)


def test_missing_weight_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="weight file not found: .*nope.npz"):
        tv.read_state_dict(str(tmp_path / "nope.npz"))
