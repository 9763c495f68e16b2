"""Pure train and eval steps, and their data-parallel wrapping.

`make_train_step(model, config)` returns `step(state, batch) -> (state, metrics)` where
batch = {'source': {'video': uint8 [B,T,H,W,3], 'pid': int32 [B]},
         'target': {'video': uint8 [B',T,H,W,3], 'camid': int32 [B'] (read with adaptation.camera_centred)}}.
With `parallel.mode='jit'` the batch is sharded over a 1-D `data` mesh and the state replicated, so
BatchNorm statistics are computed over the global batch (sync BN) and gradients are global means.

With `parallel.mode='pmap'` a step built with `axis_name=PMAP_AXIS` runs per device under
`pmap_train_step`: each device sees its share of the batch, gradients are `pmean`ed, and every loss
that depends on the whole batch (batch-hard triplet, InfoNCE groups, domain CE, teacher k-means)
is computed on embeddings all-gathered across devices, so the update equals the single-device one.
Gradient scaling: all_gather's transpose sums the cotangents of all devices, so a batch-level term
that every device computes identically reaches each device's parameters N times, and the pmean
divides by N again; per-item means computed locally (identity CE) come out as global means after
the same pmean because every device holds as many items (tests/parallel_script.py checks both).
`parallel.sync_bn` picks global (True) or per-device (False, the baseline's DataParallel) BatchNorm
statistics.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from svreid_jax import losses
from svreid_jax.data import transforms
from svreid_jax.models import grl
from svreid_jax.state import TrainState, ema_decay, ema_update


def prepare_clips(video: jax.Array, rng: jax.Array, config) -> jax.Array:
    """uint8 clips → normalised float, then Random Erasing (train only)."""
    x = transforms.normalize(video)
    if config.augment.erasing_probability > 0:
        x = transforms.random_erasing(rng, x, probability=config.augment.erasing_probability)
    return x


def active_terms(config) -> dict[str, bool]:
    """Which parts of the step run: a zero weight removes the forward it would need (faster ablations).
    The reference variant always runs everything (its terms have learnt, not configured, weights)."""
    if config.variant == "reference":
        return {"domain": True, "teacher": True, "target": True}
    w = config.loss
    domain = w.frame_domain > 0 or w.clip_domain > 0
    teacher = w.consistency_ce > 0 or w.consistency_dist > 0
    return {"domain": domain, "teacher": teacher, "target": domain or teacher}


def consistency_rampup(step: jax.Array, rampup_steps: int) -> jax.Array:
    """exp(−5 (1 − step/rampup)²) up to rampup_steps, then 1 (Tarvainen & Valpola's schedule)."""
    phase = 1.0 - jnp.clip(jnp.asarray(step, jnp.float32) / rampup_steps, 0.0, 1.0)
    return jnp.exp(-5.0 * phase * phase)


# ---------------------------------------------------------------------------------------------
# Cross-device helpers for steps that run under pmap (axis_name set) or on the whole batch (None)

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


def make_train_step(model, config, axis_name: str | None = None):
    """Build the pure train step of `config.variant`.

    'paper' (DESIGN.md): source CE + triplet, frame- and sequence-level domain discriminators behind the
    GRL, mean-teacher consistency on the target. 'reference': the authors' code
    (svreid_jax.steps_reference; the state needs TrainState.reference).
    axis_name: None for one device or jit (the batch is the global batch); the pmap axis name
    (PMAP_AXIS, see `pmap_train_step`) when each call sees one device's share of the batch. Both steps
    average their own gradients over it.
    """
    if config.variant == "reference":
        from svreid_jax import steps_reference  # it builds on this module's helpers

        temporal_model = steps_reference.build_temporal_model(config, model.num_classes)
        return steps_reference.make_reference_train_step(model, temporal_model, config, axis_name)
    if config.variant != "paper":
        raise ValueError(f"config.variant={config.variant!r}; expected 'paper' or 'reference'")
    terms = active_terms(config)
    w = config.loss
    camera_centred = terms["teacher"] and config.adaptation.camera_centred
    model = parallel_model(model, config, axis_name)
    gather = functools.partial(gather_batch, axis_name=axis_name)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict[str, jax.Array]]:
        if camera_centred and "camid" not in batch["target"]:
            raise ValueError("adaptation.camera_centred needs batch['target']['camid'] (int32 [B'] camera ids)")
        rng, k_src_aug, k_tgt_aug, k_src_drop, k_tgt_drop, k_teacher, k_kmeans, k_teacher_aug = jax.random.split(
            state.rng, 8)
        # k_kmeans stays shared: every device clusters the same gathered teacher embeddings.
        k_src_aug, k_tgt_aug, k_src_drop, k_tgt_drop, k_teacher, k_teacher_aug = (
            device_key(k, axis_name) for k in (k_src_aug, k_tgt_aug, k_src_drop, k_tgt_drop, k_teacher, k_teacher_aug))
        beta = grl.grl_beta(state.step, config.adaptation.grl_max_steps)
        source = prepare_clips(batch["source"]["video"], k_src_aug, config)
        labels = batch["source"]["pid"]
        target = prepare_clips(batch["target"]["video"], k_tgt_aug, config) if terms["target"] else None

        teacher_out = None
        ema_batch_stats = state.ema_batch_stats
        if terms["teacher"]:
            # The teacher runs in train mode (its BN sees target batch statistics, like the
            # reference) and gets no gradient.
            teacher_input = target
            if config.adaptation.teacher_augment:
                # Mean teacher: the teacher sees its own flip and erasing of the clip, so agreeing
                # with it asks the student for invariance instead of echoing its own view.
                k_flip, k_erase = jax.random.split(k_teacher_aug)
                teacher_input = prepare_clips(transforms.random_flip(k_flip, batch["target"]["video"]), k_erase, config)
            teacher_out, teacher_vars = model.apply(
                {"params": state.ema_params, "batch_stats": state.ema_batch_stats}, teacher_input,
                train=True, grl_beta=0.0, rngs={"dropout": k_teacher}, mutable=["batch_stats"],
            )
            teacher_out = jax.lax.stop_gradient(teacher_out)
            ema_batch_stats = teacher_vars["batch_stats"]

        def loss_fn(params):
            out_s, new_vars = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, source,
                train=True, grl_beta=beta, rngs={"dropout": k_src_drop}, mutable=["batch_stats"],
            )
            # A per-item mean: the pmean of the gradients makes it the global mean.
            terms_out = {"ce": losses.cross_entropy(out_s["logits"], labels, config.loss.label_smoothing)}
            terms_out["triplet"] = losses.batch_hard_triplet(
                gather(out_s["bn_embedding"]), gather(labels), config.loss.triplet_margin, config.loss.triplet_metric)
            if w.infonce > 0:
                # Groups are the K clips of one identity, contiguous in P×K batches (and across devices).
                terms_out["infonce"] = losses.temporal_infonce(
                    gather(out_s["projection"]), config.batch.num_instances, w.infonce_temperature)
            aux = {"accuracy": jnp.mean(jnp.argmax(out_s["logits"], -1) == labels)}
            if terms["target"]:
                # Source and target run as separate train-mode forwards (as in the reference), so
                # BN statistics are updated once per domain.
                out_t, new_vars = model.apply(
                    {"params": params, "batch_stats": new_vars["batch_stats"]}, target,
                    train=True, grl_beta=beta, rngs={"dropout": k_tgt_drop}, mutable=["batch_stats"],
                )
                if terms["domain"]:
                    frame_s, frame_t = gather(out_s["frame_domain_logits"]), gather(out_t["frame_domain_logits"])
                    clip_s, clip_t = gather(out_s["clip_domain_logits"]), gather(out_t["clip_domain_logits"])
                    terms_out["frame_domain"] = losses.domain_cross_entropy(frame_s, frame_t)
                    terms_out["clip_domain"] = losses.domain_cross_entropy(clip_s, clip_t)
                    aux["frame_domain_accuracy"] = losses.domain_accuracy(frame_s, frame_t)
                    aux["clip_domain_accuracy"] = losses.domain_accuracy(clip_s, clip_t)
                if terms["teacher"]:
                    terms_out.update(losses.teacher_consistency(
                        k_kmeans, gather(out_t["bn_embedding"]), gather(teacher_out["bn_embedding"]),
                        num_clusters=config.adaptation.kmeans_clusters,
                        num_iters=config.adaptation.kmeans_iters,
                        temperature=config.adaptation.consistency_temperature,
                        groups=gather(batch["target"]["camid"]) if camera_centred else None,
                    ))
            weights = {name: getattr(w, name) for name in terms_out}
            if terms["teacher"] and config.adaptation.consistency_rampup_steps > 0:
                # Sigmoid ramp-up (mean teacher): the teacher's clusters are noise early on.
                ramp = consistency_rampup(state.step, config.adaptation.consistency_rampup_steps)
                weights["consistency_ce"] = weights["consistency_ce"] * ramp
                weights["consistency_dist"] = weights["consistency_dist"] * ramp
            total = sum(weights[name] * value for name, value in terms_out.items())
            return total, (total, terms_out, aux, new_vars["batch_stats"])

        grads, (total, terms_out, aux, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
        # Under pmap every device must take the same decision below (NaN guard) and the same update.
        grads = cross_replica_mean(grads, axis_name)
        total = cross_replica_mean(total, axis_name)
        if axis_name is not None and not config.parallel.sync_bn:
            # Per-device BN normalises each device's items with their own statistics; the running
            # statistics are then averaged so the replicas stay identical. PyTorch's DataParallel
            # keeps device 0's instead: the same expectation (the average per-device batch
            # statistic), but from 1/N of the data, so the mean has less noise and no replica is special.
            batch_stats = cross_replica_mean(batch_stats, axis_name)
            ema_batch_stats = cross_replica_mean(ema_batch_stats, axis_name)
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)

        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        decay = ema_decay(state.step, config.adaptation.ema_decay, config.adaptation.ema_warmup)
        new_state = new_state.replace(
            ema_params=ema_update(state.ema_params, new_state.params, decay),
            ema_batch_stats=ema_batch_stats,
            rng=rng,
        )
        # NaN/inf guard: keep the old parameters, optimiser and teacher so one bad batch cannot poison
        # the run; the loop counts these and stops after too many in a row. The RNG and the step
        # still advance: the step counts consumed batches, which the loop, the data position and the
        # checkpoint labels all follow (a lagging step would resume one batch early).
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                                 state.replace(rng=rng, step=state.step + 1))
        metrics = {"loss": total, **terms_out, **aux, "grl_beta": beta, "grad_norm": grad_norm,
                   "teacher_decay": decay, "skipped": 1.0 - finite.astype(jnp.float32)}
        return new_state, metrics

    return train_step


def make_embed_step(model):
    """Eval forward: uint8 clips [B,T,H,W,3] → BN-neck clip embeddings [B, D] (float32), student or teacher.

    The same function object comes back for an equal model, so jit's cache (keyed on the function)
    reuses the compiled executable across evaluations instead of tracing again.
    """
    try:
        return _cached_embed_step(model)
    except TypeError:  # an unhashable model: a fresh function, compiled anew
        return _embed_step(model)


def _embed_step(model):
    def embed(variables, video):
        out = model.apply(variables, transforms.normalize(video), train=False)
        return out["bn_embedding"].astype(jnp.float32)

    return embed


_cached_embed_step = functools.lru_cache(maxsize=8)(_embed_step)


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
