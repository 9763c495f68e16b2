"""Analytical FLOP count of a JAX computation from its layer shapes: the convolutions and matrix products of its
jaxpr, forward and backward as JAX's autodiff writes them. This is what the GPU measurement's MFU divides by
(benchmarks/gpu/run.py), because XLA's own cost analysis cannot be trusted there: on GPU it counts the cuDNN
convolutions and cuBLAS matmuls (custom calls) as −1 or 0 FLOP, so its figure covers the elementwise work only.

Convention (the usual one for MFU):

* Only `conv_general_dilated` and `dot_general` are counted, 2 FLOP per multiply-add. Elementwise work (BN,
  activations, the optimiser, augmentation) is left out: it is memory-bound and a few per cent of the total.
* A convolution counts only the multiply-adds that touch a real input element: window positions over the
  padding, and over the holes of an input dilation (the input gradient of a strided convolution), are not
  counted. This is the convention of XLA's HloCostAnalysis, so the two counts meet on CPU, where XLA runs its own
  convolutions (tests/test_flops.py).
* Backward: what JAX's autodiff emits, i.e. for every convolution and dense layer a weight gradient and an input
  gradient, each as costly as its forward (backward = 2 × forward), except the input gradient of the first
  convolution, which nothing needs (the clips do not depend on the parameters). `step_breakdown` checks the
  step's count against that rule.
* The mean teacher's forward counts once (no backward: its outputs are stop_gradient). Outputs that nothing
  uses (the teacher's classifier and discriminators) count too: the jaxpr has them, XLA drops them.
* A `scan` counts its body `length` times, a `while` (unknown trip count) once, a `cond` its costliest branch.
* Rematerialised blocks (model.remat) would count their recomputation; the harness counts the step without
  remat, so MFU stays "model FLOPs".

    count_flops(fn, *args)            -> Counts  (traces fn with jax.make_jaxpr; nothing runs or compiles)
    layer_table(fn, *args)            -> [(primitive, scope, shapes, flops)] per conv/dot, in jaxpr order
    paper_step(config, classes, batch) -> the paper train step's total and the convention's parts
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import numpy as np

COUNTED = ("conv_general_dilated", "dot_general")


@dataclasses.dataclass
class Counts:
    """FLOPs by primitive (conv_general_dilated, dot_general) and how many of each there were."""

    conv: float = 0.0
    dot: float = 0.0
    convs: int = 0
    dots: int = 0

    @property
    def total(self) -> float:
        return self.conv + self.dot

    def add(self, other: "Counts", times: float = 1.0) -> None:
        self.conv += times * other.conv
        self.dot += times * other.dot
        self.convs += int(times) * other.convs
        self.dots += int(times) * other.dots


@functools.lru_cache(maxsize=None)
def _valid_pairs(in_size: int, kernel: int, out: int, stride: int, pad_low: int, lhs_dilation: int,
                 rhs_dilation: int) -> int:
    """Number of (output position, kernel tap) pairs along one spatial axis that read a real input element."""
    o = np.arange(out)[:, None]
    k = np.arange(kernel)[None, :]
    coord = o * stride + k * rhs_dilation - pad_low  # position in the padded, input-dilated axis
    valid = (coord >= 0) & (coord <= (in_size - 1) * lhs_dilation) & (coord % lhs_dilation == 0)
    return int(valid.sum())


def conv_flops(lhs_shape, rhs_shape, out_shape, params) -> float:
    """2 × multiply-adds of one conv_general_dilated (see the module docstring for which ones count)."""
    lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
    spatial = len(lhs_spec) - 2
    pairs = 1
    for i in range(spatial):
        lo, _ = params["padding"][i]
        pairs *= _valid_pairs(int(lhs_shape[lhs_spec[2 + i]]), int(rhs_shape[rhs_spec[2 + i]]),
                              int(out_shape[out_spec[2 + i]]), int(params["window_strides"][i]), int(lo),
                              int((params.get("lhs_dilation") or (1,) * spatial)[i]),
                              int((params.get("rhs_dilation") or (1,) * spatial)[i]))
    # Each output element of batch n and feature o sums over the kernel's input features (already per group).
    return 2.0 * out_shape[out_spec[0]] * out_shape[out_spec[1]] * rhs_shape[rhs_spec[1]] * pairs


def dot_flops(lhs_shape, out_shape, params) -> float:
    """2 × output elements × contracted size of one dot_general."""
    (lhs_contract, _), _ = params["dimension_numbers"]
    return 2.0 * math.prod(out_shape) * math.prod(lhs_shape[d] for d in lhs_contract)


def _sub_jaxprs(value):
    """The jaxprs inside one equation parameter (a Jaxpr, a ClosedJaxpr, or a tuple of them)."""
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def _eqn_flops(eqn) -> float:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        return conv_flops(eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape, eqn.params)
    return dot_flops(eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape, eqn.params)


def jaxpr_counts(jaxpr) -> Counts:
    """Counts of one (open) jaxpr, nested jaxprs included (scan × length, while × 1, cond: costliest branch)."""
    total = Counts()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in COUNTED:
            flops = _eqn_flops(eqn)
            if name == "conv_general_dilated":
                total.conv += flops
                total.convs += 1
            else:
                total.dot += flops
                total.dots += 1
            continue
        if name == "cond":
            branches = [jaxpr_counts(b) for b in _sub_jaxprs(eqn.params["branches"])]
            if branches:
                total.add(max(branches, key=lambda c: c.total))
            continue
        times = float(eqn.params["length"]) if name == "scan" else 1.0
        for key, value in eqn.params.items():
            # custom_jvp/custom_vjp keep their rules as callables (not jaxprs): only the primal counts.
            for sub in _sub_jaxprs(value):
                total.add(jaxpr_counts(sub), times)
    return total


def count_flops(fn: Callable, *args, **kwargs) -> Counts:
    """Counts of fn(*args, **kwargs), traced with jax.make_jaxpr (args may be jax.ShapeDtypeStruct)."""
    return jaxpr_counts(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)


def layer_table(fn: Callable, *args, **kwargs) -> list[dict[str, Any]]:
    """Every counted equation of fn's jaxpr at the top level and below, in order: primitive, the name scope
    (flax module path where the tracer recorded one), operand and output shapes, FLOPs. Nested loops are
    listed once (not multiplied)."""
    rows = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in COUNTED:
                rows.append({"primitive": eqn.primitive.name, "scope": str(eqn.source_info.name_stack),
                             "lhs": tuple(eqn.invars[0].aval.shape), "rhs": tuple(eqn.invars[1].aval.shape),
                             "out": tuple(eqn.outvars[0].aval.shape), "flops": _eqn_flops(eqn)})
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):
                    walk(sub)

    walk(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)
    return rows


# ---------------------------------------------------------------------------------------------
# The paper step (svreid_jax.variants.paper) of benchmarks/train_step.py


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def paper_step(config, num_classes: int, batch: dict) -> dict[str, float]:
    """FLOPs of one paper train step on `batch` (the global batch: arrays or ShapeDtypeStructs), from the step's
    jaxpr, with the convention's parts beside it. Nothing is initialised or compiled (jax.eval_shape).

    Returns total (conv + dot), conv, dot; forward (one train-mode forward of the model on the target clips),
    first_conv (the first convolution of that forward), and the convention's parts: student_forward (source +
    target), teacher_forward, backward (2 × the student forwards − the first convolution's input gradient, which
    JAX does not compute), rest (total − those three: the losses' and k-means' products and their gradients).
    With config.model.remat set the count is taken without it (model FLOPs, not recomputed ones)."""
    from svreid_jax import variants
    from svreid_jax.builders import create_model, init_variables
    from svreid_jax.state import create_train_state

    config = config.copy_and_resolve_references()
    config.model.remat = False
    model = create_model(config, num_classes)

    def make_state():
        params, batch_stats = init_variables(config, model, jax.random.PRNGKey(0))
        return create_train_state(config, model.apply, params, batch_stats, jax.random.PRNGKey(1), steps_per_epoch=1)

    state = jax.eval_shape(make_state)
    batch = _abstract(batch)
    step = count_flops(variants.make_train_step(model, config), state, batch)
    video = batch["target"]["video"]
    clips = jax.ShapeDtypeStruct(video.shape, np.float32)

    def forward(variables, x):
        return model.apply(variables, x, train=True, grl_beta=0.0, rngs={"dropout": jax.random.PRNGKey(0)},
                           mutable=["batch_stats"])

    variables = {"params": state.params, "batch_stats": state.batch_stats}
    layers = layer_table(forward, variables, clips)
    fwd = sum(r["flops"] for r in layers)
    first = layers[0]["flops"] if layers and layers[0]["primitive"] == "conv_general_dilated" else 0.0
    parts = {"student_forward": 2 * fwd, "teacher_forward": fwd, "backward": 2 * (2 * fwd - first)}
    return {"total": step.total, "conv": step.conv, "dot": step.dot, "convs": step.convs, "dots": step.dots,
            "forward": fwd, "first_conv": first, **parts, "rest": step.total - sum(parts.values()),
            "layers": len(layers)}


def plausible(xla_flops: float | None, analytic: float, low: float = 0.9, high: float = 2.0) -> bool:
    """Whether a backend's cost-analysis count can stand beside the analytical one: at least `low` × it (XLA
    adds the elementwise work, so it should not be below) and at most `high` × it. On GPU the convolutions and
    matmuls are custom calls counted as −1 or 0, which lands far below."""
    return xla_flops is not None and analytic > 0 and low * analytic <= xla_flops <= high * analytic
