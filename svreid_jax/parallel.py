"""Data parallelism: the device mesh, jit sharding, the pmap wrapper, cross-device helpers for the
step maths, and the placement object (`ParallelStep`) that the training loop uses.

With `parallel.mode='jit'` the batch is sharded over a 1-D `data` mesh and the state replicated, so
BatchNorm statistics are computed over the global batch (sync BN) and gradients are global means; a
step is built with `axis_name=None` and sees the global batch.

With `parallel.mode='pmap'` a step built with `axis_name=PMAP_AXIS` runs per device under
`pmap_train_step`: each device sees its share of the batch, gradients are `pmean`ed, and every loss
that depends on the whole batch (batch-hard triplet, InfoNCE groups, domain CE, teacher k-means)
is computed on embeddings all-gathered across devices (`gather_batch`), so the update equals the
single-device one. Gradient scaling: all_gather's transpose sums the cotangents of all devices, so a
batch-level term that every device computes identically reaches each device's parameters N times,
and the pmean divides by N again; per-item means computed locally (identity CE) come out as global
means after the same pmean because every device holds as many items (tests/parallel_script.py
checks both). `parallel.sync_bn` picks global (True) or per-device (False, the baseline's
DataParallel) BatchNorm statistics (docs/METHOD.md §6).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.jax_utils
import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# ---------------------------------------------------------------------------------------------
# Helpers for step maths that runs under pmap (axis_name set) or on the whole batch (None)

PMAP_AXIS = "batch"


def parallel_model(model, config, axis_name: str | None):
    """The model a step applies: with a pmap axis and `parallel.sync_bn`, a copy whose BatchNorms
    average their batch statistics over that axis; otherwise `model` itself (per-device statistics
    under pmap; already global under jit)."""
    if axis_name is None or not config.parallel.sync_bn:
        return model
    if "bn_axis_name" not in getattr(model, "__dataclass_fields__", {}):
        raise TypeError(f"parallel.sync_bn=True needs a model with a `bn_axis_name` field; "
                        f"{type(model).__name__} has none")
    return model.clone(bn_axis_name=axis_name)


def gather_batch(x: jax.Array, axis_name: str | None) -> jax.Array:
    """This device's items [b, ...] → the global batch [N·b, ...] in device order (identity when
    axis_name is None). Differentiable: the transpose sums the cotangents of every device."""
    if axis_name is None:
        return x
    return jax.lax.all_gather(x, axis_name, tiled=True)


def device_key(rng: jax.Array, axis_name: str | None) -> jax.Array:
    """A key distinct per device, for randomness drawn per item (dropout, erasing, flips): the
    replicated state's key would otherwise give item i of every device the same draw."""
    if axis_name is None:
        return rng
    return jax.random.fold_in(rng, jax.lax.axis_index(axis_name))


def cross_replica_mean(tree: Any, axis_name: str | None) -> Any:
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


# ---------------------------------------------------------------------------------------------
# jit: a 1-D 'data' mesh, the batch split on it, the state replicated


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named 'data' over all (or the given) devices."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Place a host batch (this process's part of the global batch) as global arrays split on 'data'."""
    sharding = NamedSharding(mesh, P("data"))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, P()))


def jit_train_step(train_step, mesh: Mesh, donate: bool = True):
    """jit over the mesh: state replicated, batch split on 'data'."""
    replicated = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))
    return jax.jit(train_step, in_shardings=(replicated, data), out_shardings=(replicated, replicated),
                   donate_argnums=(0,) if donate else ())


@dataclasses.dataclass(frozen=True)
class ParallelStep:
    """A train step placed for `config.parallel.mode`, with the conversions the loop needs.

    step(placed_state, placed_batch) -> (placed_state, metrics as scalars)
    put_batch(host_batch) -> placed_batch  (this process's part of the global batch)
    put_state(state) -> placed_state       (state as `replicate(state, mesh)` gives it)
    get_state(placed_state) -> state       (replicated on the mesh: what checkpoints and
                                            evaluation take, the same in every mode)
    """

    step: Callable[[Any, Any], tuple[Any, dict]]
    put_batch: Callable[[Any], Any]
    put_state: Callable[[Any], Any]
    get_state: Callable[[Any], Any]


MODES = ("jit", "pmap")  # config.parallel.mode


def parallelize(make_step: Callable[..., Callable], model, config, mesh: Mesh) -> ParallelStep:
    """Build `make_step(model, config, axis_name=...)` for config.parallel.mode over `mesh`:
    'jit' (axis_name None, batch sharded on 'data') or 'pmap' (axis_name PMAP_AXIS, one host)."""
    mode = config.parallel.mode
    if mode == "jit":
        return ParallelStep(step=jit_train_step(make_step(model, config, axis_name=None), mesh),
                            put_batch=lambda batch: shard_batch(batch, mesh),
                            put_state=lambda state: state, get_state=lambda state: state)
    if mode == "pmap":
        if jax.process_count() > 1:
            raise ValueError("config.parallel.mode='pmap' runs on one host; use parallel.mode='jit' with "
                             f"parallel.multihost (this run has {jax.process_count()} processes)")
        devices = jax.local_devices()
        return ParallelStep(
            step=pmap_train_step(make_step(model, config, axis_name=PMAP_AXIS), devices=devices),
            put_batch=lambda batch: split_for_devices(batch, len(devices)),
            put_state=lambda state: replicate_state(state, devices),
            get_state=lambda state: replicate(unreplicate_state(state), mesh))
    raise ValueError(f"config.parallel.mode={mode!r}; expected 'jit' or 'pmap'")


# ---------------------------------------------------------------------------------------------
# pmap: state with a leading device axis, batch as [devices, per_device, ...]


def pmap_train_step(train_step, *, axis_name: str = PMAP_AXIS, devices=None, donate: bool = True):
    """pmap any `step(state, batch) -> (state, metrics)` built for `axis_name` (e.g.
    `make_train_step(model, config, axis_name=PMAP_AXIS)`).

    Takes a replicated state (`replicate_state`) and a batch from `split_for_devices`; returns the
    replicated new state and the metrics averaged over devices, without a device axis (scalars).
    """

    def step(state, batch):
        new_state, metrics = train_step(state, batch)
        return new_state, jax.lax.pmean(metrics, axis_name)

    return jax.pmap(step, axis_name=axis_name, devices=devices, out_axes=(0, None),
                    donate_argnums=(0,) if donate else ())


def replicate_state(tree: Any, devices=None) -> Any:
    """Every leaf [...] → [num_devices, ...], one copy per (local) device, for `pmap_train_step`."""
    devices = jax.local_devices() if devices is None else devices
    return flax.jax_utils.replicate(tree, devices)


def unreplicate_state(tree: Any) -> Any:
    """Device 0's copy of a replicated tree (the replicas are identical after every step)."""
    return jax.tree.map(lambda x: x[0], tree)


def split_for_devices(batch: Any, num_devices: int) -> Any:
    """Host batch leaves [B, ...] → [num_devices, B / num_devices, ...] (device d gets the d-th
    contiguous slice, so P×K groups stay whole when B / num_devices is a multiple of K)."""

    def split(path, x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % num_devices:
            raise ValueError(f"batch{jax.tree_util.keystr(path)} has leading size "
                             f"{x.shape[0] if x.ndim else 'none (a scalar)'}, which must be divisible by the "
                             f"{num_devices} devices of parallel.mode='pmap'; change the batch size "
                             f"(batch.num_identities·batch.num_instances, batch.target_size)")
        return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])

    return jax.tree_util.tree_map_with_path(split, batch)


def log_devices() -> None:
    """One log line: JAX version, this process and the devices it sees."""
    logging.info("JAX %s, process %d/%d, devices: %s", jax.__version__, jax.process_index(), jax.process_count(),
                 jax.devices())
