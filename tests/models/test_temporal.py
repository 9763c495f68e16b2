"""MS-TCN (MultiStageTCN): shapes, parameter names, init, dilations, stage chaining, shared BN."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from svreid_jax.models.temporal import MultiStageTCN, SingleStageTCN

B, T, D, K, FMAPS = 3, 4, 24, 5, 16


@pytest.fixture(scope="module")
def tcn():
    model = MultiStageTCN(num_classes=K, features=FMAPS)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(B, T, D)), jnp.float32)
    # Eager init: ~80 small layers compile faster op by op than as one jitted init on CPU.
    variables = model.init(jax.random.key(0), x, train=False)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return model, variables, x, apply


def test_shapes(tcn):
    model, variables, x, apply = tcn
    out = apply(variables, x)
    assert {k: v.shape for k, v in out.items()} == {
        "logits": (4, B, T, K), "features": (4, B, T, FMAPS), "sequence_features": (4, B, FMAPS)}
    assert all(v.dtype == jnp.float32 for v in out.values())


def test_parameter_tree_and_init(tcn):
    _, variables, _, _ = tcn
    params = variables["params"]
    assert set(params) == {"stage1", "stages_0", "stages_1", "stages_2", "bn"}
    assert set(variables["batch_stats"]) == {"bn"}
    for stage, din in (("stage1", D), ("stages_0", K), ("stages_2", K)):
        p = params[stage]
        assert set(p) == {"conv_1x1", "conv_out"} | {f"layers_{i}" for i in range(10)}
        assert p["conv_1x1"]["kernel"].shape == (din, FMAPS)
        assert p["conv_out"]["kernel"].shape == (FMAPS, K)
        assert p["layers_9"]["conv_dilated"]["kernel"].shape == (3, FMAPS, FMAPS)
        assert p["layers_9"]["conv_1x1"]["kernel"].shape == (FMAPS, FMAPS)
        # PyTorch default init: U(±1/√fan_in), fan_in = C_in·k.
        assert float(np.abs(p["conv_1x1"]["kernel"]).max()) <= 1 / np.sqrt(din)
        assert float(np.abs(p["layers_0"]["conv_dilated"]["kernel"]).max()) <= 1 / np.sqrt(3 * FMAPS)
        assert float(np.abs(p["layers_0"]["conv_dilated"]["bias"]).max()) <= 1 / np.sqrt(3 * FMAPS)
    scale = np.asarray(params["bn"]["scale"])
    assert 0 < scale.std() < 0.05 and abs(scale.mean() - 1) < 0.03
    np.testing.assert_array_equal(params["bn"]["bias"], 0.0)


def test_long_dilations_only_see_the_centre_tap(tcn):
    """With T = 4, a layer of dilation d ≥ 4 reads t ± d only from the zero padding: its outer taps
    never matter, while those of dilations 1 and 2 do."""
    _, variables, x, apply = tcn
    base = apply(variables, x)

    def perturb(layers):
        flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables["params"]))
        for path, leaf in flat.items():
            if path[-2:] == ("conv_dilated", "kernel") and int(path[-3].split("_")[1]) in layers:
                flat[path] = leaf.at[0].add(0.5).at[2].add(-0.5)
        return {"params": flax.traverse_util.unflatten_dict(flat), "batch_stats": variables["batch_stats"]}

    far = apply(perturb(range(2, 10)), x)  # dilations 4 … 512
    for key in base:
        np.testing.assert_array_equal(np.asarray(far[key]), np.asarray(base[key]))
    for near in (0, 1):  # dilations 1 and 2
        changed = apply(perturb([near]), x)
        assert not np.allclose(changed["features"], base["features"]), near


def test_stages_chain_through_softmax(tcn):
    """Stage s > 1 reads the softmax of stage s − 1's logits; q_s = BN(mean_T F_s) with the one
    shared BN (running statistics in eval mode)."""
    _, variables, x, apply = tcn
    out = apply(variables, x)
    stage = SingleStageTCN(num_classes=K, features=FMAPS)
    feats, logits = stage.apply({"params": variables["params"]["stages_0"]},
                                jax.nn.softmax(out["logits"][0], axis=-1), train=False)
    np.testing.assert_allclose(feats, out["features"][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, out["logits"][1], rtol=1e-5, atol=1e-6)
    bn_p, bn_s = variables["params"]["bn"], variables["batch_stats"]["bn"]
    seq_raw = np.asarray(out["features"]).mean(2)
    want = (seq_raw - bn_s["mean"]) / np.sqrt(bn_s["var"] + 1e-5) * bn_p["scale"] + bn_p["bias"]
    np.testing.assert_allclose(out["sequence_features"], want, rtol=1e-5, atol=1e-5)


def test_train_mode_dropout_and_four_bn_updates(tcn):
    model, variables, x, _ = tcn

    @jax.jit
    def fwd(key):
        return model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])

    out, new_vars = fwd(jax.random.key(1))
    out2, _ = fwd(jax.random.key(2))
    assert not np.allclose(out["features"], out2["features"])  # dropout 0.5 in the residual layers
    # The shared BN is called once per stage: four momentum-0.9 steps, in stage order.
    mean = np.asarray(variables["batch_stats"]["bn"]["mean"], np.float64)
    for s in range(4):
        mean = 0.9 * mean + 0.1 * np.asarray(out["features"][s]).mean(axis=(0, 1))
    np.testing.assert_allclose(new_vars["batch_stats"]["bn"]["mean"], mean, rtol=1e-5, atol=1e-6)


def test_input_must_be_three_dimensional(tcn):
    model, variables, _, _ = tcn
    with pytest.raises(ValueError, match="B, T, D"):
        model.apply(variables, jnp.zeros((B, D)), train=False)
