"""The `paper` variant's train step: the method as the paper describes it (docs/METHOD.md §1, §4).

Source CE + batch-hard triplet (+ temporal InfoNCE), frame- and sequence-level domain discriminators
on the backbone's own embeddings behind the GRL, and the mean teacher's clustering consistency on the
target; every term reaches the deployed network. The terms come from `variants.terms.TERMS`.

step(state, batch) -> (state, metrics), with
batch = {'source': {'video': uint8 [B,T,H,W,3], 'pid': int32 [B]},
         'target': {'video': uint8 [B',T,H,W,3], 'camid': int32 [B'] (read with adaptation.camera_centred)}}.
"""
from __future__ import annotations

import functools

import jax

from svreid_jax import parallel
from svreid_jax.models import grl
from svreid_jax.state import TrainState, ema_decay, ema_update
from svreid_jax.variants import common, terms as terms_lib


def reads_target(config) -> bool:
    """Whether the step forwards the target clips: a term reads them, or target BN needs their statistics."""
    return terms_lib.uses_target(config) or bool(config.adaptation.target_bn)


def make_train_step(model, config, axis_name: str | None = None, *, after_update=None):
    """Build the pure train step. axis_name: None for one device or jit (the batch is the global batch);
    the pmap axis (parallel.PMAP_AXIS) when each call sees one device's share; gradients are averaged over it.

    after_update(extra, kept) -> extra: how a variant built on this step (variants/plus.py) moves its own
    state (TrainState.variant_state) after the update, from what the terms kept (TermContext.keep, whole
    batch, identical on every device). With `adaptation.target_bn` the student's BN running statistics come
    from its target forward only (the source forward still normalises with its batch statistics); the
    target clips are then forwarded even when no term reads them (source only + target BN)."""
    common.check_config(config)
    active = terms_lib.active(config)
    needs = terms_lib.inputs_needed(active)
    uses_target = reads_target(config)
    uses_teacher = terms_lib.TEACHER in needs
    camera_centred = uses_teacher and config.adaptation.camera_centred
    target_bn = config.adaptation.target_bn
    ramped = any(t.ramped for t in active) and config.adaptation.consistency_rampup_steps > 0
    model = parallel.parallel_model(model, config, axis_name)
    gather = functools.partial(parallel.gather_batch, axis_name=axis_name)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict[str, jax.Array]]:
        if camera_centred and "camid" not in batch["target"]:
            raise ValueError("adaptation.camera_centred needs batch['target']['camid'] (int32 [B'] camera ids)")
        rng, k_src_aug, k_tgt_aug, k_src_drop, k_tgt_drop, k_teacher, k_kmeans, k_teacher_aug = jax.random.split(
            state.rng, 8)
        # k_kmeans stays shared: every device clusters the same gathered teacher embeddings.
        k_src_aug, k_tgt_aug, k_src_drop, k_tgt_drop, k_teacher, k_teacher_aug = (
            parallel.device_key(k, axis_name)
            for k in (k_src_aug, k_tgt_aug, k_src_drop, k_tgt_drop, k_teacher, k_teacher_aug))
        beta = grl.grl_beta(state.step, config.adaptation.grl_max_steps)
        source = common.prepare_clips(batch["source"]["video"], k_src_aug, config)
        labels = batch["source"]["pid"]
        target = common.prepare_clips(batch["target"]["video"], k_tgt_aug, config) if uses_target else None

        teacher_out, ema_batch_stats = None, state.ema_batch_stats
        if uses_teacher:
            teacher_out, ema_batch_stats = common.teacher_forward(model, state, batch["target"]["video"], target,
                                                                  k_teacher_aug, k_teacher, config)
        ramp = (common.consistency_rampup(state.step, config.adaptation.consistency_rampup_steps)
                if ramped else None)

        def loss_fn(params):
            out_s, batch_stats = common.student_forward(model, params, state.batch_stats, source, beta, k_src_drop)
            # target_bn: the source forward's running-statistics update is dropped, so evaluation
            # normalises with target statistics only.
            carried = {"batch_stats": state.batch_stats if target_bn else batch_stats}

            def target_forward():
                out_t, carried["batch_stats"] = common.student_forward(model, params, carried["batch_stats"],
                                                                       target, beta, k_tgt_drop)
                return out_t

            ctx = terms_lib.TermContext(config, source=out_s, labels=labels, gather=gather,
                                        target_forward=target_forward if uses_target else None,
                                        teacher=teacher_out, target_camid=batch["target"].get("camid"),
                                        kmeans_key=k_kmeans, extra=state.variant_state,
                                        target_index=batch["target"].get("index"))
            values, aux = terms_lib.compute(active, ctx)
            if target_bn:
                ctx.target  # noqa: B018 -- the forward that carries the target statistics, if no term ran it
            total = terms_lib.weighted_sum(values, terms_lib.weights(active, config, ramp))
            kept = {k: v for k, v in ctx.keep.items() if not k.startswith("_")}
            return total, (total, values, aux, carried["batch_stats"], kept)

        grads, (total, values, aux, batch_stats, kept) = jax.grad(loss_fn, has_aux=True)(state.params)
        # Under pmap every device must take the same decision (the non-finite guard) and the same update.
        grads = parallel.cross_replica_mean(grads, axis_name)
        total = parallel.cross_replica_mean(total, axis_name)
        if axis_name is not None and not config.parallel.sync_bn:
            # Per-device BN normalises each device's items with their own statistics; the running
            # statistics are then averaged so the replicas stay identical. PyTorch's DataParallel
            # keeps device 0's instead: the same expectation (the average per-device batch
            # statistic), but from 1/N of the data, so the mean has less noise and no replica is special.
            batch_stats = parallel.cross_replica_mean(batch_stats, axis_name)
            ema_batch_stats = parallel.cross_replica_mean(ema_batch_stats, axis_name)
        grad_norm = common.global_norm(grads)

        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        decay = ema_decay(state.step, config.adaptation.ema_decay, config.adaptation.ema_warmup)
        new_state = new_state.replace(ema_params=ema_update(state.ema_params, new_state.params, decay),
                                      ema_batch_stats=ema_batch_stats, rng=rng)
        if after_update is not None:
            new_state = new_state.replace(variant_state=after_update(state.variant_state, kept))
        metrics = {"loss": total, **values, **aux, "grl_beta": beta, "teacher_decay": decay}
        return common.guard_and_report(state, new_state, rng, total, grad_norm, metrics)

    return train_step
