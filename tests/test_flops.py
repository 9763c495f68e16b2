"""benchmarks/flops.py, the analytical FLOP count the GPU measurement's MFU divides by: convolutions and matrix
products against a brute-force count of their multiply-adds, the backward convention on a two-layer network, loops,
and the paper step's count against XLA's own cost analysis on CPU (within 5 %)."""
import argparse
import itertools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import flops  # noqa: E402


def _brute_conv_macs(in_hw, kernel_hw, stride, padding, lhs_dilation, rhs_dilation, out_hw, batch, cin, cout):
    """Multiply-adds that touch a real input element, by walking every output position and kernel tap."""
    count = 0
    for oy, ox, ky, kx in itertools.product(range(out_hw[0]), range(out_hw[1]), range(kernel_hw[0]),
                                            range(kernel_hw[1])):
        ok = True
        for o, k, s, (lo, _), ld, rd, size in zip((oy, ox), (ky, kx), stride, padding, lhs_dilation, rhs_dilation,
                                                  in_hw):
            c = o * s + k * rd - lo  # in the padded, input-dilated axis
            if c < 0 or c > (size - 1) * ld or c % ld:
                ok = False
        count += ok
    return count * batch * cin * cout


@pytest.mark.parametrize("in_hw, kernel_hw, stride, padding, lhs_dilation, rhs_dilation", [
    ((2, 1), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1)),   # a map smaller than the kernel: mostly padding
    ((8, 6), (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), (1, 1)),   # strided
    ((9, 7), (7, 7), (2, 2), ((3, 3), (3, 3)), (1, 1), (1, 1)),   # ResNet's stem
    ((5, 4), (3, 3), (1, 1), ((2, 2), (2, 2)), (2, 2), (1, 1)),   # input-dilated: a strided conv's input gradient
    ((9, 8), (2, 3), (1, 1), ((0, 1), (1, 0)), (1, 1), (2, 3)),   # kernel-dilated, asymmetric padding
])
def test_conv_flops_count_the_multiply_adds_that_touch_real_input(in_hw, kernel_hw, stride, padding, lhs_dilation,
                                                                  rhs_dilation):
    x = jnp.ones((2, *in_hw, 3))
    w = jnp.ones((*kernel_hw, 3, 5))

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, stride, padding, lhs_dilation, rhs_dilation,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    out = jax.eval_shape(conv, x, w).shape
    counts = flops.count_flops(conv, x, w)
    macs = _brute_conv_macs(in_hw, kernel_hw, stride, padding, lhs_dilation, rhs_dilation, out[1:3], 2, 3, 5)
    assert counts.conv == 2 * macs and counts.convs == 1 and counts.dot == 0


def test_conv_flops_hand_checked_and_grouped():
    # 3×3, pad 1 on a 2×2 map: each axis has 2 outputs × 3 taps = 6 pairs, 4 of them on real pixels; 16 pairs of
    # 36 in 2-D. 1 image, 4 input channels in 2 groups of 2, 6 output channels: 2 × 16 × 2 × 6 = 384.
    x, w = jnp.ones((1, 2, 2, 4)), jnp.ones((3, 3, 2, 6))
    conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2)
    assert flops.count_flops(conv, x, w).conv == 384.0


def test_dot_flops():
    a, b = jnp.ones((7, 5, 3)), jnp.ones((7, 3, 4))
    assert flops.count_flops(jnp.matmul, a, b).dot == 2 * 7 * 5 * 3 * 4  # batched
    assert flops.count_flops(lambda x: x @ x.T, jnp.ones((6, 10))).dot == 2 * 6 * 6 * 10


def test_backward_is_twice_the_forward_less_the_first_layers_input_gradient():
    x = jnp.ones((2, 8, 8, 3))
    w1, w2, w3 = jnp.ones((3, 3, 3, 4)), jnp.ones((3, 3, 4, 5)), jnp.ones((5 * 16, 7))
    conv = lambda x, w, s: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (s, s), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def net(params, x):
        y = conv(jnp.tanh(conv(x, params[0], 1)), params[1], 2)
        return jnp.sum(jnp.tanh(y.reshape(2, -1) @ params[2]))

    c1 = flops.count_flops(lambda x, w: conv(x, w, 1), x, w1).total
    c2 = flops.count_flops(lambda x, w: conv(x, w, 2), jnp.ones((2, 8, 8, 4)), w2).total
    d = 2 * 2 * 80 * 7
    forward = flops.count_flops(net, (w1, w2, w3), x)
    assert forward.total == c1 + c2 + d
    step = flops.count_flops(jax.grad(net), (w1, w2, w3), x)
    # forward + weight gradients of all three + input gradients of the last two (x needs none)
    assert step.total == 3 * (c1 + c2 + d) - c1
    assert (step.convs, step.dots) == (2 + 2 + 1, 1 + 2)


def test_loops_and_branches():
    w = jnp.ones((4, 4))

    def scanned(x):
        return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)[0]

    one = 2 * 3 * 4 * 4
    assert flops.count_flops(scanned, jnp.ones((3, 4))).dot == 5 * one
    branched = lambda p, x: jax.lax.cond(p, lambda x: x @ w @ w, lambda x: x @ w, x)  # noqa: E731
    assert flops.count_flops(branched, True, jnp.ones((3, 4))).dot == 2 * one  # the costlier branch


def test_plausible():
    assert flops.plausible(1.02e12, 1e12) and flops.plausible(1.9e12, 1e12)
    assert not flops.plausible(-1.0, 1e12)  # a custom call XLA could not count
    assert not flops.plausible(3e10, 1e12)  # elementwise work only
    assert not flops.plausible(None, 1e12) and not flops.plausible(5e12, 1e12)


# ---------------------------------------------------------------------------------------------
# The paper step


def _tiny_paper_step():
    """The paper train step on a tiny ResNet (width 64, 128×64 frames: its convolutions are most of the work, as in
    ResNet-50's, where with width 8 on 32×16 frames the optimiser's elementwise work would rival them)."""
    import train_step
    from svreid_jax import variants
    from svreid_jax.builders import create_model, init_variables
    from svreid_jax.state import create_train_state

    args = argparse.Namespace(depth="tiny", model_width=64, dtype="float32", remat=False, height=128, width=64,
                              frames=4, batch=2)
    config = train_step.make_config(args)
    config.adaptation.kmeans_clusters = 2
    batch = train_step.make_batch(2, 4, 128, 64)
    model = create_model(config, 16)

    def make_state():
        params, batch_stats = init_variables(config, model, jax.random.PRNGKey(0))
        return create_train_state(config, model.apply, params, batch_stats, jax.random.PRNGKey(1), steps_per_epoch=1)

    state = jax.eval_shape(make_state)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), batch)
    lowered = jax.jit(variants.make_train_step(model, config)).lower(state, abstract)
    return config, batch, flops.paper_step(config, 16, batch), lowered


@pytest.fixture(scope="module")
def tiny_step():
    return _tiny_paper_step()


def _xla_flops(cost):
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def test_paper_step_count_follows_the_convention(tiny_step):
    _, _, count, _ = tiny_step
    f = count["forward"]
    assert count["student_forward"] == 2 * f and count["teacher_forward"] == f
    assert count["backward"] == 2 * (2 * f - count["first_conv"]) and count["first_conv"] > 0
    # What the convention leaves out (the losses' and k-means' products) is tiny next to the network.
    assert 0 <= count["rest"] < 1e-3 * count["total"]
    assert count["total"] == count["conv"] + count["dot"] and count["conv"] > 0.99 * count["total"]
    assert count["layers"] == 17  # 12 convolutions (stem, 4 blocks × 2, 3 shortcuts) + classifier + 2 × 2 disc.


def test_paper_step_count_matches_xla_cost_analysis_of_the_lowered_step(tiny_step):
    _, _, count, lowered = tiny_step
    ratio = _xla_flops(lowered.cost_analysis()) / count["total"]
    assert 1.0 <= ratio < 1.05, ratio  # XLA adds the elementwise work on top


@pytest.mark.slow  # compiling the step takes a minute on 2 cores
def test_paper_step_count_matches_xla_cost_analysis_of_the_compiled_step(tiny_step):
    _, _, count, lowered = tiny_step
    ratio = _xla_flops(lowered.compile().cost_analysis()) / count["total"]
    assert 0.95 <= ratio <= 1.05, ratio


def test_remat_counts_as_the_model_without_it(tiny_step):
    config, batch, count, _ = tiny_step
    remat = config.copy_and_resolve_references()
    remat.model.remat = True
    assert flops.paper_step(remat, 16, batch)["total"] == count["total"]
