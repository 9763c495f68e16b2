"""Pure train and eval steps, and their data-parallel wrapping.

`make_train_step(model, config)` returns `step(state, batch) -> (state, metrics)` where
batch = {'source': {'video': uint8 [B,T,H,W,3], 'pid': int32 [B]},
         'target': {'video': uint8 [B',T,H,W,3], 'camid': int32 [B'] (read with adaptation.camera_centred)}}.
With `parallel.mode='jit'` the batch is sharded over a 1-D `data` mesh and the state replicated, so
BatchNorm statistics are computed over the global batch (sync BN) and gradients are global means.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from svreid_jax import losses
from svreid_jax.data import transforms
from svreid_jax.models import grl
from svreid_jax.state import TrainState, ema_decay, ema_update


def _prepare(video: jax.Array, rng: jax.Array, config) -> jax.Array:
    """uint8 clips → normalised float, then Random Erasing (train only)."""
    x = transforms.normalize(video)
    if config.augment.erasing_probability > 0:
        x = transforms.random_erasing(rng, x, probability=config.augment.erasing_probability)
    return x


def active_terms(config) -> dict[str, bool]:
    """Which parts of the step run: a zero weight removes the forward it would need (faster ablations)."""
    w = config.loss
    domain = w.frame_domain > 0 or w.clip_domain > 0
    teacher = w.consistency_ce > 0 or w.consistency_dist > 0
    return {"domain": domain, "teacher": teacher, "target": domain or teacher}


def consistency_rampup(step: jax.Array, rampup_steps: int) -> jax.Array:
    """exp(−5 (1 − step/rampup)²) up to rampup_steps, then 1 (Tarvainen & Valpola's schedule)."""
    phase = 1.0 - jnp.clip(jnp.asarray(step, jnp.float32) / rampup_steps, 0.0, 1.0)
    return jnp.exp(-5.0 * phase * phase)


def make_train_step(model, config):
    """Build the pure train step for the paper variant (DESIGN.md): source CE + triplet, frame- and
    sequence-level domain discriminators behind the GRL, mean-teacher consistency on the target."""
    terms = active_terms(config)
    w = config.loss
    camera_centred = terms["teacher"] and config.adaptation.camera_centred

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict[str, jax.Array]]:
        if camera_centred and "camid" not in batch["target"]:
            raise ValueError("adaptation.camera_centred needs batch['target']['camid'] (int32 [B'] camera ids)")
        rng, k_src_aug, k_tgt_aug, k_src_drop, k_tgt_drop, k_teacher, k_kmeans, k_teacher_aug = jax.random.split(
            state.rng, 8)
        beta = grl.grl_beta(state.step, config.adaptation.grl_max_steps)
        source = _prepare(batch["source"]["video"], k_src_aug, config)
        labels = batch["source"]["pid"]
        target = _prepare(batch["target"]["video"], k_tgt_aug, config) if terms["target"] else None

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
                teacher_input = _prepare(transforms.random_flip(k_flip, batch["target"]["video"]), k_erase, config)
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
            terms_out = {
                "ce": losses.cross_entropy(out_s["logits"], labels, config.loss.label_smoothing),
                "triplet": losses.batch_hard_triplet(out_s["bn_embedding"], labels, config.loss.triplet_margin,
                                                     config.loss.triplet_metric),
            }
            if w.infonce > 0:
                # Groups are the K clips of one identity, contiguous in P×K batches.
                terms_out["infonce"] = losses.temporal_infonce(
                    out_s["projection"], config.batch.num_instances, w.infonce_temperature)
            aux = {"accuracy": jnp.mean(jnp.argmax(out_s["logits"], -1) == labels)}
            if terms["target"]:
                # Source and target run as separate train-mode forwards (as in the reference), so
                # BN statistics are updated once per domain.
                out_t, new_vars = model.apply(
                    {"params": params, "batch_stats": new_vars["batch_stats"]}, target,
                    train=True, grl_beta=beta, rngs={"dropout": k_tgt_drop}, mutable=["batch_stats"],
                )
                if terms["domain"]:
                    terms_out["frame_domain"] = losses.domain_cross_entropy(
                        out_s["frame_domain_logits"], out_t["frame_domain_logits"])
                    terms_out["clip_domain"] = losses.domain_cross_entropy(
                        out_s["clip_domain_logits"], out_t["clip_domain_logits"])
                    aux["frame_domain_accuracy"] = losses.domain_accuracy(
                        out_s["frame_domain_logits"], out_t["frame_domain_logits"])
                    aux["clip_domain_accuracy"] = losses.domain_accuracy(
                        out_s["clip_domain_logits"], out_t["clip_domain_logits"])
                if terms["teacher"]:
                    terms_out.update(losses.teacher_consistency(
                        k_kmeans, out_t["bn_embedding"], teacher_out["bn_embedding"],
                        num_clusters=config.adaptation.kmeans_clusters,
                        num_iters=config.adaptation.kmeans_iters,
                        temperature=config.adaptation.consistency_temperature,
                        groups=batch["target"]["camid"] if camera_centred else None,
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
