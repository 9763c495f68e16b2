"""Array operations that training, clustering and evaluation share, each defined here only.

* `l2_normalise`: rows divided by their Euclidean norm.
* `camera_centred`: rows minus the mean of the rows filmed by the same camera.
* `batch_moments`: per-feature mean and biased variance over a batch, optionally across devices.

The first two take numpy or jax arrays and answer in kind: numpy in, numpy operations (the host-side
clustering and the test-time step); a jax array or tracer in, jnp operations (inside the jitted
step). The keyword options are where the callers genuinely differ; each caller's choice is pinned bit
for bit by tests/test_ops.py, since a changed last bit can move a DBSCAN neighbour or a rank.
tests/test_layout.py fails when one of these computations is written out anywhere else in the package.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-12  # floor of the norm: a zero row stays zero instead of becoming NaN


def _is_jax(x) -> bool:
    return isinstance(x, jax.Array)  # tracers under jit / grad / vmap included


def l2_normalise(x, *, eps: float = EPS, zero_safe: bool = False):
    """x [..., D] float divided by max(‖x‖₂ over the last axis, eps); numpy or jax as x, x's dtype.

    zero_safe (jax only): the gradient at a zero row is zero rather than NaN (‖x‖'s own gradient there
    is 0/0); the losses need it because a centred or empty row can be exactly zero. The two forms
    agree in value but XLA may fuse them differently, so code that never differentiates keeps the
    shorter one its recorded numbers came from.
    """
    if not _is_jax(x):
        if zero_safe:
            raise ValueError("l2_normalise(zero_safe=True) concerns gradients; numpy arrays have none")
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
    if not zero_safe:
        return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
    # The "double where": zero rows are swapped for ones before the norm, so no 0/0 enters the
    # backward pass, and put back to zero after.
    nonzero = jnp.any(x != 0, axis=-1, keepdims=True)
    safe = jnp.where(nonzero, x, jnp.ones_like(x))
    return jnp.where(nonzero, safe / jnp.maximum(jnp.linalg.norm(safe, axis=-1, keepdims=True), eps), 0.0)


def camera_centred(x, camids, *, normalise_before: bool = False, normalise_after: bool = False,
                   keep_singletons: bool = False, dtype=None):
    """Each row of x [N, D] minus the mean of the rows with its camera id (camids int [N]).

    Camera ids are recording metadata that every split carries, not identity labels: removing what a
    camera adds to everything it films (scene, colour cast) is label-free.

    normalise_before / normalise_after: `l2_normalise` the rows before taking the means / the result.
    keep_singletons: a row alone in its camera keeps its value instead of becoming zero.
    dtype: the precision the means are taken in (x is cast to it first); None keeps x's dtype.

    numpy x: the per-camera means come from one `mean(0)` per camera, and the result is float32
      (the means are taken in `dtype` because camera offsets can dwarf what remains).
    jax x: camids must be a jax int array too; the means are one [N, N] same-camera matmul (static
      shapes under jit), normalisation is `l2_normalise(zero_safe=True)` since the step differentiates
      through it, and the result keeps the computation dtype.
    """
    if not _is_jax(x):
        x = np.asarray(x, dtype)
        camids = np.asarray(camids).reshape(-1)
        if normalise_before:
            x = l2_normalise(x)
        out = x.copy()
        for cam in np.unique(camids):
            rows = camids == cam
            if keep_singletons and np.count_nonzero(rows) == 1:
                continue
            out[rows] -= x[rows].mean(0)
        if normalise_after:
            out = l2_normalise(out)
        return out.astype(np.float32)
    if dtype is not None:
        x = x.astype(dtype)
    if normalise_before:
        x = l2_normalise(x, zero_safe=True)
    same = (camids[:, None] == camids[None, :]).astype(x.dtype)
    count = jnp.sum(same, axis=1, keepdims=True)
    out = x - (same @ x) / count
    if keep_singletons:
        out = jnp.where(count > 1, out, x)
    if normalise_after:
        out = l2_normalise(out, zero_safe=True)
    return out


def batch_moments(x: jax.Array, axis_name: Optional[str] = None, *,
                  flatten: bool = False) -> tuple[jax.Array, jax.Array]:
    """(mean [D], biased variance [D]) of x [..., D] over all its leading axes, in x's dtype; two
    passes (the variance around the finished mean), as PyTorch's batch norm.

    axis_name: also over every device on this pmap / shard_map axis (sync BN). The pmean of the
      per-device means is the global mean only because every device holds as many rows.
    flatten: reduce x.reshape(-1, D) over its rows rather than x over its leading axes. The
      statistics are the same, but XLA:CPU orders the sums differently for some shapes, so each
      caller keeps the form its recorded numbers were made with.
    """
    if flatten:
        x = x.reshape(-1, x.shape[-1])
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    if axis_name is not None:
        mean = jax.lax.pmean(mean, axis_name)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    if axis_name is not None:
        var = jax.lax.pmean(var, axis_name)
    return mean, var
