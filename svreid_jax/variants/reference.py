"""The `reference` variant's train step: what the authors' PyTorch code does (docs/METHOD.md §8,
docs/REPRODUCIBILITY.md).

One step, per source batch (docs/METHOD.md §6.4):
  1. student forwards (train mode) on the source clips, then on the target clips; L_reid = CE + triplet
     (+ InfoNCE) on the source;
  2. the EMA teacher forwards (train mode, no gradient) on the same target clips;
  3. L_cons: k-means (sklearn's, on the device) on the 2B stacked student/teacher target embeddings
     (a constant, D2);
  4. the MS-TCN temporal stages read the per-frame BN'd features `mid` of source and target, DETACHED
     (D1); one frame and one sequence discriminator (shared by all stages, one GRL β, D6) on the stage
     features; L_st = Σ_s (CE_s + 0.15·TMSE_s) + Σ_{s∈{2,3}} (adv_frame_s + adv_seq_s + 0.01·Ent_s);
  5. L = Σ e^{a_i} L_i with learnable a (accumulated gradients, D4); the temporal module's gradient is
     (1 + e^{a1})·∇L_st because the reference back-propagates L_st twice (D5);
  6. Adam on the temporal module (moments reset every epoch, D12), Adam-L2 on the student, Adam-L2 on a;
     then the EMA teacher with α = min(1 − 1/(t+1), 0.99), t = iteration within the epoch (D3).

Each divergence is a flag in `config.reference` (docs/REPRODUCIBILITY.md); flipping one gives the
paper-side behaviour of that piece while keeping the rest.

Batch: as the paper step's (svreid_jax.variants.paper) ({'source': {'video', 'pid'}, 'target': {'video'}}, uint8 clips).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from svreid_jax import losses, parallel
from svreid_jax.models import grl
from svreid_jax.models import reid
from svreid_jax.models.temporal import TemporalDomainHeads
from svreid_jax.state import TrainState, ema_decay, ema_update
from svreid_jax.variants import common, terms as terms_lib

NUM_WEIGHTS = 3  # a = (a_reid, a_stage, a_consistency)


def check_config(config) -> None:
    """Clear errors for reference settings that cannot work."""
    r = config.reference
    if len(tuple(r.weight_init)) != NUM_WEIGHTS:
        raise ValueError(f"config.reference.weight_init needs {NUM_WEIGHTS} values (a_reid, a_stage, a_consistency), "
                         f"got {tuple(r.weight_init)}")
    bad = [s for s in r.adv_stages if not 0 <= int(s) < r.num_stages]
    if bad:
        raise ValueError(f"config.reference.adv_stages {tuple(r.adv_stages)}: stages {bad} are outside 0..{r.num_stages - 1}")
    if r.consistency_clusters > 2 * config.batch.target_size:
        raise ValueError(f"config.reference.consistency_clusters={r.consistency_clusters} is more than the "
                         f"2·{config.batch.target_size} target embeddings it clusters")
    common.check_config(config)


def build_temporal_model(config, num_classes: int) -> TemporalDomainHeads:
    """The MS-TCN + shared discriminators of the reference (docs/METHOD.md §3.6)."""
    r = config.reference
    return TemporalDomainHeads(num_classes=num_classes, num_stages=r.num_stages, num_layers=r.num_layers,
                               features=r.features, dropout_rate=r.dropout, disc_dropout=r.dropout)


def optimizers(config) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """(temporal-module optimiser, loss-weight optimiser).

    Temporal module + discriminators: torch Adam(lr, no weight decay). Loss weights a: torch Adam with
    L2 added to the gradient (not AdamW), no schedule.
    """
    r = config.reference
    temporal = optax.adam(r.temporal_lr, b1=0.9, b2=0.999, eps=1e-8)
    weights = optax.chain(optax.add_decayed_weights(r.weight_decay), optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
                          optax.scale(-r.weight_lr))
    return temporal, weights


def init_reference_state(config, temporal_model: TemporalDomainHeads, rng: jax.Array, steps_per_epoch: int,
                         feature_dim: int) -> dict[str, Any]:
    """The extra state of the reference variant (TrainState.variant_state):

    temporal_params / temporal_batch_stats: TemporalDomainHeads variables (init on [1, T, feature_dim]);
    temporal_opt_state: its Adam state; weights: a [3] float32 (config.reference.weight_init);
    weight_grad_sum: the running sum of ∂L/∂a the reference never zeroes (D4); weight_opt_state;
    steps_per_epoch: int32 scalar, for the per-epoch resets inside the jitted step.
    """
    check_config(config)
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    # Eager init: the ~90 small MS-TCN layers initialise faster op by op than as one compiled program on CPU.
    variables = temporal_model.init({"params": rng}, jnp.zeros((1, config.data.seq_len, feature_dim), jnp.float32),
                                    frame_beta=0.0, sequence_beta=0.0, train=False)
    temporal_tx, weight_tx = optimizers(config)
    weights = jnp.asarray(tuple(config.reference.weight_init), jnp.float32)
    return {
        "temporal_params": variables["params"],
        "temporal_batch_stats": variables["batch_stats"],
        "temporal_opt_state": temporal_tx.init(variables["params"]),
        "weights": weights,
        "weight_grad_sum": jnp.zeros_like(weights),
        "weight_opt_state": weight_tx.init(weights),
        "steps_per_epoch": jnp.asarray(steps_per_epoch, jnp.int32),
    }


def stage_losses(source_out: dict, target_out: dict, labels: jax.Array, config) -> tuple[jax.Array, dict]:
    """L_st of the reference (docs/METHOD.md §4.6–§4.8) from TemporalDomainHeads outputs.

    source_out / target_out: dicts with logits [S, B, T, K], frame_domain_logits [S, B, T, 2],
    sequence_domain_logits [S, B, 2]; labels [B] source pids (every frame gets its clip's pid).
    L_st = Σ_s (CE_s + tmse_weight·TMSE_s) + Σ_{s ∈ adv_stages} (adv_frame_s + adv_seq_s + entropy_weight·Ent_s),
    classification and TMSE on the source only, adversarial and entropy terms on source and target.
    Returns (L_st, {'stage{s}_ce', 'stage{s}_tmse', 'stage{s}_adv_frame', 'stage{s}_adv_seq', 'stage{s}_entropy'}),
    s 1-based like the paper's stage numbers.
    """
    r = config.reference
    terms: dict[str, jax.Array] = {}
    total = jnp.zeros((), jnp.float32)
    for s in range(r.num_stages):
        ce = losses.frame_cross_entropy(source_out["logits"][s], labels)
        sm = losses.tmse(source_out["logits"][s], r.tmse_tau)
        terms[f"stage{s + 1}_ce"], terms[f"stage{s + 1}_tmse"] = ce, sm
        total = total + ce + r.tmse_weight * sm
    for s in sorted({int(s) for s in r.adv_stages}):
        adv_f = losses.domain_cross_entropy(source_out["frame_domain_logits"][s], target_out["frame_domain_logits"][s])
        adv_q = losses.domain_cross_entropy(source_out["sequence_domain_logits"][s],
                                            target_out["sequence_domain_logits"][s])
        k = source_out["logits"].shape[-1]
        class_logits = jnp.concatenate([source_out["logits"][s].reshape(-1, k), target_out["logits"][s].reshape(-1, k)])
        domain_logits = jnp.concatenate([source_out["frame_domain_logits"][s].reshape(-1, 2),
                                         target_out["frame_domain_logits"][s].reshape(-1, 2)])
        ent = losses.attentive_entropy(class_logits, domain_logits)
        terms[f"stage{s + 1}_adv_frame"], terms[f"stage{s + 1}_adv_seq"] = adv_f, adv_q
        terms[f"stage{s + 1}_entropy"] = ent
        total = total + adv_f + adv_q + r.entropy_weight * ent
    return total, terms


KMEANS_TOL = 1e-4  # sklearn's tol: a restart stops once the squared centre shift ≤ tol · mean feature variance


def _squared_distances(x: jax.Array, centres: jax.Array) -> jax.Array:
    """[N, D], [K, D] → [N, K] squared Euclidean distances, clamped at 0. HIGHEST precision: GPUs and
    TPUs would otherwise multiply float32 in TF32/bf16, and near ties would change clusters."""
    cross = jnp.matmul(x, centres.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(jnp.sum(x * x, -1)[:, None] + jnp.sum(centres * centres, -1)[None, :] - 2.0 * cross, 0.0)


def _greedy_kmeans_plus_plus(key: jax.Array, x: jax.Array, num_clusters: int) -> jax.Array:
    """sklearn's greedy k-means++ (docs/METHOD.md §4.9): the first centre uniformly; each next one the best,
    by the resulting potential Σ_i min_c ‖x_i − c‖², of 2 + ⌊ln K⌋ candidates drawn ∝ the squared
    distance to the nearest centre so far (uniformly when every point already is a centre).
    x [N, D] → centres [K, D], rows of x."""
    n = x.shape[0]
    trials = 2 + int(np.log(num_clusters))
    first_key, key = jax.random.split(key)
    first = x[jax.random.randint(first_key, (), 0, n)]
    centres = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(first)
    closest = _squared_distances(x, first[None])[:, 0]

    def seed_next(c, carry):
        centres, closest, key = carry
        key, sub = jax.random.split(key)
        logits = jnp.where(closest > 0, jnp.log(jnp.maximum(closest, 1e-30)), -jnp.inf)
        logits = jnp.where(jnp.any(closest > 0), logits, jnp.zeros_like(logits))
        candidates = jax.random.categorical(sub, logits, shape=(trials,))
        potentials = jnp.minimum(closest[:, None], _squared_distances(x, x[candidates]))  # [N, trials]
        best = jnp.argmin(jnp.sum(potentials, axis=0))
        return centres.at[c].set(x[candidates[best]]), potentials[:, best], key

    centres, _, _ = jax.lax.fori_loop(1, num_clusters, seed_next, (centres, closest, key))
    return centres


def _lloyd(x: jax.Array, centres: jax.Array, max_iter: int, threshold: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Lloyd iterations from `centres` [K, D] until the squared centre shift Σ‖c' − c‖² ≤ threshold or
    max_iter iterations (the numpy path's rule, sklearn's). An empty cluster keeps its centre (sklearn
    moves it to a far point; the numpy path keeps it). Returns (centres [K, D], iterations run int32)."""
    num_clusters = centres.shape[0]

    def unconverged(carry):
        i, _, shift = carry
        return (i < max_iter) & (shift > threshold)

    def iteration(carry):
        i, centres, _ = carry
        onehot = jax.nn.one_hot(jnp.argmin(_squared_distances(x, centres), axis=1), num_clusters, dtype=x.dtype)
        counts = jnp.sum(onehot, axis=0)
        sums = jnp.matmul(onehot.T, x, precision=jax.lax.Precision.HIGHEST)
        moved = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centres)
        return i + 1, moved, jnp.sum(jnp.square(moved - centres))

    i, centres, _ = jax.lax.while_loop(unconverged, iteration,
                                       (jnp.zeros((), jnp.int32), centres, jnp.asarray(jnp.inf, x.dtype)))
    return centres, i


def device_kmeans(key: jax.Array, points: jax.Array, num_clusters: int, *, n_init: int = 10, max_iter: int = 300,
                  tol: float = KMEANS_TOL) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """k-means as the authors' sklearn 1.0 `KMeans(n_clusters)` runs it, jit-able on the device
    (docs/METHOD.md §4.9): n_init restarts (vmapped), each greedy k-means++ seeding then Lloyd until the
    squared centre shift ≤ tol · mean per-feature variance or max_iter; the restart of least inertia
    (the first on ties) is kept, its labels the nearest final centre.

    points [N, D] (computed in float32, centred on their mean as sklearn does). Returns (centres [K, D]
    float32, labels int32 [N], inertia float32, iterations int32 of the kept restart).
    """
    x = points.astype(jnp.float32)
    mean = jnp.mean(x, axis=0)
    x = x - mean
    threshold = tol * jnp.mean(jnp.var(x, axis=0))

    def restart(k):
        centres, iterations = _lloyd(x, _greedy_kmeans_plus_plus(k, x, num_clusters), max_iter, threshold)
        labels = jnp.argmin(_squared_distances(x, centres), axis=1).astype(jnp.int32)
        # The inertia from the differences themselves: the expansion above loses digits when the
        # points are far from the origin, and the restarts are compared by it.
        return centres, labels, jnp.sum(jnp.square(x - centres[labels])), iterations

    centres, labels, inertia, iterations = jax.vmap(restart)(jax.random.split(key, n_init))
    best = jnp.argmin(inertia)
    return centres[best] + mean, labels[best], inertia[best], iterations[best]


def kmeans_consistency(student: jax.Array, teacher: jax.Array, rng: jax.Array, config) -> jax.Array:
    """The reference's group-label consistency constant (docs/METHOD.md §4.9), on the device.

    student, teacher: [B, D] embeddings of the same target clips. `device_kmeans` on the 2B stacked
    vectors (reference.consistency_clusters, _n_init, _max_iter); L_01 = fraction of clips whose student
    and teacher vectors fall in different clusters, L_dist = mean Euclidean distance of the 2B vectors to
    their centre. Returns float32 [L_cons, L_01, L_dist], L_cons = consistency_mismatch_weight · L_01 +
    L_dist; no gradient flows (the reference's is a float computed in numpy).
    """
    r = config.reference
    s = jax.lax.stop_gradient(student).astype(jnp.float32)
    t = jax.lax.stop_gradient(teacher).astype(jnp.float32)
    x = jnp.concatenate([s, t])
    centres, labels, _, _ = device_kmeans(rng, x, r.consistency_clusters, n_init=r.consistency_n_init,
                                          max_iter=r.consistency_max_iter)
    b = s.shape[0]
    mismatch = jnp.mean((labels[:b] != labels[b:]).astype(jnp.float32))
    dist = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(x - centres[labels]), axis=-1)))
    return jax.lax.stop_gradient(jnp.stack([r.consistency_mismatch_weight * mismatch + dist, mismatch, dist]))


def make_reference_losses(model, temporal_model, config, axis_name: str | None = None):
    """The differentiable part of the step, exposed for tests.

    Returns loss_fn(params, temporal_params, weights, ctx) -> (objective, aux) where ctx holds
    batch_stats, temporal_batch_stats, source [B,T,H,W,3] float (normalised), labels [B], target
    [B',T,H,W,3] float, teacher_embedding [B', D], beta, sequence_beta, keys (dict of PRNG keys:
    src_drop, tgt_drop, tmp_src, tmp_tgt, kmeans).
    objective = Σ e^{a_i} L_i (+ L_st again with double_count_stage_loss): differentiating it gives the
    reference's gradients for the student, the temporal module and a. aux = (terms dict, new
    batch_stats, new temporal_batch_stats, metrics dict).
    """
    r = config.reference
    w = config.loss
    model = parallel.parallel_model(model, config, axis_name)
    # With sync BN under pmap, `mid` is normalised with every device's frames, like the BN-neck.
    bn_axis = axis_name if config.parallel.sync_bn else None

    def gather(x):
        # DataParallel gathers every output on GPU 0 before the losses; under pmap the batch-coupled
        # terms (triplet mining, k-means) see the whole batch too.
        return parallel.gather_batch(x, axis_name)

    # The supervised re-ID sum L_reid: the source-only terms of the shared table (CE, triplet, InfoNCE).
    reid_terms = terms_lib.active(config, only=(terms_lib.SOURCE,))

    def loss_fn(params, temporal_params, weights, ctx):
        keys = ctx["keys"]
        labels = ctx["labels"]
        out_s, batch_stats = common.student_forward(model, params, ctx["batch_stats"], ctx["source"], ctx["beta"],
                                                    keys["src_drop"])
        # InfoNCE on the gathered batch (the authors' DataParallel gathers the projections before its
        # criterion), normalised as their code does with reference.infonce_sum_groups (D14).
        term_ctx = terms_lib.TermContext(config, source=out_s, labels=labels, gather=gather,
                                         infonce_sum_groups=r.infonce_sum_groups)
        terms, metrics = terms_lib.compute(reid_terms, term_ctx)
        l_reid = terms_lib.weighted_sum(terms, terms_lib.weights(reid_terms, config))
        out_t, batch_stats = common.student_forward(model, params, batch_stats, ctx["target"], ctx["beta"],
                                                    keys["tgt_drop"])

        scale, bias = params["bnneck"]["scale"], params["bnneck"]["bias"]
        # The reference's `mid = bn(x)` in train mode; its running statistics are ReIDNet's to account
        # for (model.bnneck_torch_stats).
        mid_s = reid.frame_batch_norm(out_s["frame_embeddings"], scale, bias, bn_axis)
        mid_t = reid.frame_batch_norm(out_t["frame_embeddings"], scale, bias, bn_axis)
        if r.detach_temporal_input:
            # D1: the reference feeds mid.detach(): nothing of L_st reaches the backbone.
            mid_s, mid_t = jax.lax.stop_gradient(mid_s), jax.lax.stop_gradient(mid_t)
        kw = dict(frame_beta=ctx["beta"], sequence_beta=ctx["sequence_beta"], train=True, mutable=["batch_stats"])
        ts, t_vars = temporal_model.apply({"params": temporal_params, "batch_stats": ctx["temporal_batch_stats"]},
                                          mid_s, rngs={"dropout": keys["tmp_src"]}, **kw)
        tt, t_vars = temporal_model.apply({"params": temporal_params, "batch_stats": t_vars["batch_stats"]},
                                          mid_t, rngs={"dropout": keys["tmp_tgt"]}, **kw)
        l_st, st_terms = stage_losses(ts, tt, labels, config)
        terms.update(st_terms)
        if r.backbone_clip_discriminator:
            # D8, the first commit's commented-out call: a sequence discriminator on the backbone's own
            # clip embeddings (ReIDNet's clip_discriminator, GRL inside), so L_st reaches the backbone.
            terms["backbone_clip_domain"] = losses.domain_cross_entropy(out_s["clip_domain_logits"],
                                                                        out_t["clip_domain_logits"])
            l_st = l_st + terms["backbone_clip_domain"]

        if r.consistency_constant:
            cons = kmeans_consistency(gather(out_t["bn_embedding"]), gather(ctx["teacher_embedding"]),
                                      keys["kmeans"], config)
            l_cons = cons[0]
            terms["cons_mismatch"], terms["cons_dist"] = cons[1], cons[2]
        else:
            # D2 flipped: the paper variant's differentiable teacher consistency (L^C_1 + L^C_2), on the
            # gathered batch like the paper step's (the shared k-means key: every device clusters alike).
            paper = losses.teacher_consistency(
                keys["kmeans"], gather(out_t["bn_embedding"]), gather(ctx["teacher_embedding"]),
                num_clusters=r.consistency_clusters, num_iters=config.adaptation.kmeans_iters,
                temperature=config.adaptation.consistency_temperature)
            terms.update(paper)
            l_cons = w.consistency_ce * paper["consistency_ce"] + w.consistency_dist * paper["consistency_dist"]

        parts = jnp.stack([l_reid, l_st, l_cons])
        scales = jnp.exp(weights) if r.learnable_weights else jnp.exp(jax.lax.stop_gradient(weights))
        total = jnp.sum(scales * parts)
        # D5: the reference calls L_st.backward() and then L.backward(): the temporal module (and,
        # were its input not detached, the backbone) receives ∇L_st once more. L_st does not depend on a.
        objective = total + (l_st if r.double_count_stage_loss else 0.0)
        terms.update(reid=l_reid, stage=l_st, consistency=l_cons)
        metrics["stage4_accuracy"] = jnp.mean(jnp.argmax(ts["logits"][-1], -1) == labels[:, None])
        return objective, (total, terms, batch_stats, t_vars["batch_stats"], metrics)

    return loss_fn


def make_reference_train_step(model, temporal_model, config, axis_name: str | None = None):
    """The reference variant's `step(state, batch) -> (state, metrics)`; state.variant_state must be set
    (init_reference_state). With `axis_name` (inside pmap/shard_map) gradients are `lax.pmean`ed over it
    and the batch-coupled terms see the gathered batch; BatchNorm stays per device (the reference's
    DataParallel without SyncBN)."""
    check_config(config)
    r = config.reference
    temporal_tx, weight_tx = optimizers(config)
    loss_fn = make_reference_losses(model, temporal_model, config, axis_name)
    model = parallel.parallel_model(model, config, axis_name)
    grad_fn = jax.grad(loss_fn, argnums=(0, 1, 2), has_aux=True)

    def mean(x):
        return parallel.cross_replica_mean(x, axis_name)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict[str, jax.Array]]:
        ref = state.variant_state
        if ref is None:
            raise ValueError("the reference step needs TrainState.variant_state (variants.reference.init_reference_state)")
        rng, k_src_aug, k_tgt_aug, k_teacher_aug, k_teacher, *k = jax.random.split(state.rng, 10)
        # Erasing, flips and dropout draw per item: each device folds in its index so that its share of
        # the batch gets its own draws (as the authors' per-clip CPU transforms and per-GPU dropout do).
        # The k-means key stays shared: every device clusters the same gathered embeddings.
        k_src_aug, k_tgt_aug, k_teacher_aug, k_teacher = (parallel.device_key(x, axis_name)
                                                          for x in (k_src_aug, k_tgt_aug, k_teacher_aug, k_teacher))
        keys = dict(zip(("src_drop", "tgt_drop", "tmp_src", "tmp_tgt"), (parallel.device_key(x, axis_name)
                                                                         for x in k[:4])), kmeans=k[4])
        step_in_epoch = state.step % ref["steps_per_epoch"]
        epoch_start = step_in_epoch == 0
        # D6: one β (the frame schedule) for both discriminators; β_video = β/10 is the unused alternative.
        beta = grl.grl_beta(state.step, config.adaptation.grl_max_steps)
        sequence_beta = beta if r.shared_grl_beta else beta / 10.0

        source = common.prepare_clips(batch["source"]["video"], k_src_aug, config)
        target = common.prepare_clips(batch["target"]["video"], k_tgt_aug, config)
        # D3 flipped (teacher_augment): the teacher sees its own flip and erasing (the authors: the same clip).
        teacher_out, teacher_stats = common.teacher_forward(model, state, batch["target"]["video"], target,
                                                            k_teacher_aug, k_teacher, config)

        ctx = dict(batch_stats=state.batch_stats, temporal_batch_stats=ref["temporal_batch_stats"], source=source,
                   labels=batch["source"]["pid"], target=target,
                   teacher_embedding=teacher_out["bn_embedding"], beta=beta,
                   sequence_beta=sequence_beta, keys=keys)
        (g_params, g_temporal, g_weights), (total, terms, batch_stats, t_batch_stats, aux) = grad_fn(
            state.params, ref["temporal_params"], ref["weights"], ctx)
        g_params, g_temporal, g_weights = mean((g_params, g_temporal, g_weights))
        terms, aux, total = mean((terms, aux, total))
        # Per-device BN (DataParallel) leaves each replica its own running statistics; they are averaged
        # so the replicas stay identical (the reference keeps GPU 0's: same expectation, more noise).
        # The MS-TCN's BN is per device in either case (it is not part of the synchronised ReIDNet).
        if not config.parallel.sync_bn:
            batch_stats, teacher_stats = mean((batch_stats, teacher_stats))
        t_batch_stats = mean(t_batch_stats)

        # 1) temporal module + discriminators: Adam, re-created at every epoch start in the reference (D12).
        t_opt = ref["temporal_opt_state"]
        if r.reset_temporal_optimizer_every_epoch:
            fresh = temporal_tx.init(ref["temporal_params"])
            t_opt = jax.tree.map(lambda f, o: jnp.where(epoch_start, f, o), fresh, t_opt)
        t_updates, t_opt = temporal_tx.update(g_temporal, t_opt, ref["temporal_params"])
        temporal_params = optax.apply_updates(ref["temporal_params"], t_updates)
        # 2) student: the configured optimiser (Adam-L2, MultiStep) on e^{a0}·∇L_reid (+ whatever flags add).
        new_state = state.apply_gradients(grads=g_params, batch_stats=batch_stats)
        # 3) loss weights: the reference never zeroes attn_para.grad, so Adam sees the running sum (D4).
        weights, grad_sum, w_opt = ref["weights"], ref["weight_grad_sum"], ref["weight_opt_state"]
        if r.learnable_weights:
            grad_sum = grad_sum + g_weights if r.accumulate_weight_grads else g_weights
            w_updates, w_opt = weight_tx.update(grad_sum, w_opt, weights)
            weights = optax.apply_updates(weights, w_updates)
        # 4) EMA teacher: t restarts every epoch in the reference, so α = 0 (a copy) at each epoch start (D3).
        t_ema = step_in_epoch if r.teacher_reset_every_epoch else state.step
        decay = ema_decay(t_ema, config.adaptation.ema_decay, config.adaptation.ema_warmup)
        new_reference = dict(ref, temporal_params=temporal_params, temporal_batch_stats=t_batch_stats,
                             temporal_opt_state=t_opt, weights=weights, weight_grad_sum=grad_sum,
                             weight_opt_state=w_opt)
        new_state = new_state.replace(ema_params=ema_update(state.ema_params, new_state.params, decay),
                                      ema_batch_stats=teacher_stats, rng=rng, variant_state=new_reference)

        grad_norm = common.global_norm((g_params, g_temporal))
        metrics = {"loss": total, **terms, **aux, "grl_beta": beta, "teacher_decay": decay}
        new_state, metrics = common.guard_and_report(state, new_state, rng, total, grad_norm, metrics)
        for i, name in enumerate(("reid", "stage", "consistency")):
            metrics[f"a_{name}"] = ref["weights"][i]
        return new_state, metrics

    return train_step


def make_train_step(model, config, axis_name: str | None = None):
    """The variant registry's builder: the reference step with its MS-TCN built from the config."""
    return make_reference_train_step(model, build_temporal_model(config, model.num_classes), config, axis_name)


def init_state(config, model, params, rng: jax.Array, steps_per_epoch: int) -> dict[str, Any]:
    """TrainState.variant_state for a fresh run: the MS-TCN and its optimiser, the loss weights (see
    init_reference_state), sized from the student's BN-neck."""
    temporal_model = build_temporal_model(config, model.num_classes)
    feature_dim = int(params["bnneck"]["scale"].shape[-1])
    return init_reference_state(config, temporal_model, jax.random.fold_in(rng, 1), steps_per_epoch, feature_dim)

