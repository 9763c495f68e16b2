"""The training loop: data, model, state, steps, evaluation, logs and checkpoints. No model maths here."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from svreid_jax import steps
from svreid_jax.data import datasets, pipeline, toy
from svreid_jax.data.records import DatasetSplits
from svreid_jax.evaluation import extract as eval_extract
from svreid_jax.evaluation import protocols
from svreid_jax.models import reid
from svreid_jax.state import TrainState, create_train_state, learning_rate_schedule
from svreid_jax.utils import progress as progress_lib
from svreid_jax.utils.checkpointing import Checkpointer
from svreid_jax.utils.writers import MetricWriter


# ---------------------------------------------------------------------------------------------
# Data


def load_datasets(config, workdir: str) -> tuple[DatasetSplits, DatasetSplits]:
    """(source splits, target splits) as the config names them; generates the demo data if asked."""
    source_cfg, target_cfg = config.data.source, config.data.target
    source_root, target_root = source_cfg.root, target_cfg.root
    if config.data.demo:
        root = config.data.demo_root or os.path.join(workdir, "data")
        paths = toy.ensure(root, **config.data.demo_options.to_dict())
        target_root = str(paths.target_root)
        source_root = target_root if config.data.demo_source_domain == "target" else str(paths.source_root)
    source = _load_split_set(source_cfg, source_root)
    target = _load_split_set(target_cfg, target_root)
    return source, target


def _load_split_set(cfg, root: str) -> DatasetSplits:
    if cfg.packed:
        # array_record shards written by `python -m svreid_jax.data.pack`: same tracklets, same batches.
        from svreid_jax.data import pack

        return pack.load_packed(cfg.packed)
    return datasets.load(cfg.name, root, **cfg.options.to_dict())


def hold_out_source(splits: DatasetSplits, num_ids: int, seed: int) -> tuple[DatasetSplits, DatasetSplits]:
    """Split source identities: (training splits, a held-out query/gallery for model selection).

    `num_ids` source identities (drawn with the seed) leave training; each gives its first tracklet
    as a query and the rest as gallery. Training pids are relabelled 0..N−1. Selecting on these
    never looks at target labels.
    """
    if not isinstance(splits.train, tuple):
        raise ValueError("train.select_holdout_ids needs the folder layout; packed shards cannot be re-split. "
                         "Set data.source.packed='' or train.select_holdout_ids=0")
    pids = sorted({t.pid for t in splits.train})
    if num_ids >= len(pids) - 1:
        raise ValueError(f"train.select_holdout_ids={num_ids} leaves too few of the {len(pids)} source identities")
    held = set(np.random.default_rng(seed).choice(pids, size=num_ids, replace=False).tolist())
    kept = [p for p in pids if p not in held]
    relabel = {p: i for i, p in enumerate(kept)}
    train_part = tuple(dataclasses.replace(t, pid=relabel[t.pid]) for t in splits.train if t.pid in relabel)
    query, gallery, seen = [], [], set()
    for t in splits.train:
        if t.pid in held:
            (gallery if t.pid in seen else query).append(t)
            seen.add(t.pid)
    return (DatasetSplits(train_part, splits.query, splits.gallery),
            DatasetSplits((), tuple(query), tuple(gallery)))


def prepare_data(config, workdir: str) -> tuple[DatasetSplits, DatasetSplits, DatasetSplits | None]:
    """(source, target, selection split or None) as the config asks, logging what was chosen."""
    source, target = load_datasets(config, workdir)
    selection = None
    if config.train.select_holdout_ids > 0 and not config.train.select_on_target_test:
        source, selection = hold_out_source(source, config.train.select_holdout_ids, config.seed)
        logging.info("model selection on %d held-out source identities (%d query / %d gallery tracklets)",
                     config.train.select_holdout_ids, len(selection.query), len(selection.gallery))
    elif config.train.select_on_target_test:
        logging.warning("train.select_on_target_test=True selects the checkpoint by target *test* rank-1 "
                        "(the reference's behaviour, method-spec D10): the result is optimistically biased.")
        selection = target
    return source, target, selection


def clip_spec(config, train: bool) -> pipeline.ClipSpec:
    decoding = dict(decoder=config.data.decoder, draft=config.data.draft_decode)
    if train:
        return pipeline.ClipSpec(seq_len=config.data.seq_len, height=config.data.height, width=config.data.width,
                                 temporal=config.data.train_temporal, flip=config.augment.flip, **decoding)
    return pipeline.ClipSpec(seq_len=config.eval.seq_len, height=config.data.height, width=config.data.width,
                             temporal=config.eval.temporal, flip=False, **decoding)


# ---------------------------------------------------------------------------------------------
# Model


def create_model(config, num_classes: int) -> reid.ReIDNet:
    m = config.model
    backbone = {"depth": m.depth, "width": m.width, "last_stride": m.last_stride,
                "stem_pool_padding": m.stem_pool_padding, "conv_bias": m.conv_bias, "remat": m.remat}
    return reid.ReIDNet(num_classes=num_classes, backbone=backbone, frame_pooling=m.frame_pooling,
                        disc_hidden=m.disc_hidden, disc_dropout=m.disc_dropout, dtype=jnp.dtype(m.dtype),
                        arch=m.arch, infonce_projection=config.loss.infonce > 0)


def init_variables(config, model, rng: jax.Array) -> tuple[Any, Any]:
    shape = (1, config.data.seq_len, config.data.height, config.data.width, 3)
    params, batch_stats = reid.init_model(model, rng, shape)
    if config.model.init_from:
        from svreid_jax import interop  # only when a weight file is named

        params, batch_stats = interop.load_backbone_weights(config.model.init_from, params, batch_stats)
    return params, batch_stats


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate(config, model, variables, splits: DatasetSplits, mesh, *, all_protocols: bool = False) -> dict[str, float]:
    """Query/gallery evaluation: {'rank1','rank5','rank10','rank20','mAP','num_valid_queries', ...}.

    Distances follow eval.distance (and eval.rerank). With `all_protocols` the other protocols that apply
    are added as '<protocol>/<metric>' keys (evaluation.protocols.evaluate_target): the MARS include_query
    and all galleries for a MARS exclude_query target, SC/CC when the tracklets carry clothes ids. The
    unprefixed keys are always the primary protocol (the reference's).
    """
    start = time.perf_counter()
    tracklets = tuple(splits.query) + tuple(splits.gallery)
    feats = eval_extract.tracklet_features(config, model, variables, tracklets, mesh)
    extract_sec = time.perf_counter() - start
    nq = len(splits.query)
    target = config.data.target
    mars = target.name == "mars" and target.options.get("gallery", "exclude_query") == "exclude_query"
    results = protocols.evaluate_target(feats[:nq], feats[nq:], splits.query, splits.gallery,
                                        distance=protocols.DistanceSpec.from_config(config),
                                        max_rank=config.eval.max_rank, mars=mars, all_protocols=all_protocols)
    metrics = protocols.flatten(results)
    metrics["extract_sec"] = extract_sec
    return metrics


def results_table(metrics: dict[str, float], title: str, primary: str | None = None) -> str:
    """A markdown table of R-1/5/10/20 and mAP in percent, one row per protocol of `metrics`.

    The first row holds the unprefixed metrics, labelled `primary` (default: 'target', or the protocol
    name when other protocols are present); '<protocol>/<metric>' keys make the other rows.
    """
    rows, std = protocols.unflatten(metrics, primary)
    return protocols.markdown_table(rows, title, std)


# ---------------------------------------------------------------------------------------------
# The loop


def _log_devices() -> None:
    logging.info("JAX %s, process %d/%d, devices: %s", jax.__version__, jax.process_index(),
                 jax.process_count(), jax.devices())


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Train as configured, evaluate on the target test split at the end, return the final metrics.

    Writes under workdir: metrics.jsonl, tensorboard/, checkpoints/, results.json, results.md.
    Resumes automatically from the latest checkpoint in workdir.
    """
    if config.parallel.multihost:
        jax.distributed.initialize()
    _log_devices()
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    writer = MetricWriter(workdir, enabled=is_main)
    mesh = steps.data_mesh()

    source, target, selection = prepare_data(config, workdir)
    num_classes = source.num_train_pids
    logging.info("source: %d train tracklets / %d ids; target: %d train, %d query, %d gallery tracklets",
                 len(source.train), num_classes, len(target.train), len(target.query), len(target.gallery))

    process = dict(process_index=jax.process_index(), process_count=jax.process_count())
    source_it, steps_per_epoch = pipeline.source_stream(
        source.train, num_identities=config.batch.num_identities, num_instances=config.batch.num_instances,
        spec=clip_spec(config, train=True), seed=config.seed, num_threads=config.data.num_threads,
        prefetch=config.data.prefetch, num_workers=config.data.num_workers, **process)
    if config.train.steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, config.train.steps_per_epoch)
    identity_balanced = config.data.target_sampling == "identity"
    if identity_balanced:
        logging.warning("data.target_sampling='identity' samples target batches by target ground-truth "
                        "labels (the reference's behaviour, method-spec D7): this is not unsupervised.")
    target_it = pipeline.target_stream(
        target.train, batch_size=config.batch.target_size, spec=clip_spec(config, train=True),
        seed=config.seed, num_threads=config.data.num_threads, prefetch=config.data.prefetch,
        identity_balanced=identity_balanced, num_instances=config.batch.num_instances,
        num_workers=config.data.num_workers, views_per_tracklet=config.data.target_views, **process)
    uses_target = steps.active_terms(config)["target"]
    total_steps = config.train.num_epochs * steps_per_epoch
    model = create_model(config, num_classes)
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    params, batch_stats = init_variables(config, model, init_rng)
    state = create_train_state(config, model.apply, params, batch_stats, state_rng, steps_per_epoch,
                               reference=_reference_state(config, model, params, state_rng, steps_per_epoch))
    state = steps.replicate(state, mesh)
    # `state` holds the placed state while training; par.get_state gives the mesh-replicated layout
    # that checkpoints and evaluation use in every mode (a checkpoint does not depend on the mode).
    par = steps.parallelize(steps.make_train_step, model, config, mesh)

    # Batches go to the devices `data.device_prefetch` steps ahead, placed as the parallel mode wants
    # them; the checkpointed iterator state counts only the batches handed to the step
    # (pipeline.DevicePrefetch).
    def place_target(b):
        # An unused target is cut to one clip per device before the transfer.
        video = b["video"] if uses_target else b["video"][: jax.local_device_count()]
        return par.put_batch({"video": video, "camid": b["camid"][: len(video)]})

    source_it = pipeline.prefetch_to_device(source_it, config.data.device_prefetch,
                                            lambda b: par.put_batch({"video": b["video"], "pid": b["pid"]}))
    target_it = pipeline.prefetch_to_device(target_it, config.data.device_prefetch, place_target)

    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.train.keep_checkpoints)
    iterators = {"source_iter": source_it, "target_iter": target_it}
    if checkpointer.latest_step() is not None:
        state, meta = checkpointer.restore(state, iterators)
        logging.info("resumed from %s at step %d", checkpointer.directory, int(meta["step"]))
    start_step = int(jax.device_get(state.step))

    state = par.put_state(state)
    progress = progress_lib.Progress(total_steps, start_step)
    lr_schedule = learning_rate_schedule(config, steps_per_epoch)
    logging.info("training %d steps (%d epochs × %d steps) from step %d", total_steps,
                 config.train.num_epochs, steps_per_epoch, start_step)

    best = {"rank1": -1.0, "step": None}
    best_checkpointer = (Checkpointer(os.path.join(workdir, "best"), max_to_keep=1)
                         if selection is not None else None)
    if best_checkpointer is not None and best_checkpointer.latest_step() is not None:
        best.update(step=best_checkpointer.latest_step(),
                    rank1=float(best_checkpointer.read_meta().get("select_rank1", -1.0)))
    pending_metrics: list[dict] = []
    nonfinite_run = 0
    step = start_step
    unconsumed = None
    try:
        for step in range(start_step, total_steps):
            # Data positions before this step's batches: an interrupt inside the step must save these,
            # or the resumed run would skip the batches the unfinished step had drawn.
            unconsumed = {name: it.get_state() for name, it in iterators.items()}
            # The target stream advances even when no loss reads it, so every variant of a config sees
            # the same source batches.
            batch = {"source": next(source_it), "target": next(target_it)}
            state, metrics = par.step(state, batch)
            unconsumed = None
            pending_metrics.append(metrics)
            done = step + 1
            if done % config.train.log_every_steps == 0 or done == total_steps:
                fetched = jax.device_get(pending_metrics)
                pending_metrics = []
                for m in fetched:
                    nonfinite_run = nonfinite_run + 1 if m["skipped"] > 0 else 0
                    if nonfinite_run >= config.train.max_consecutive_nonfinite:
                        raise FloatingPointError(
                            f"{nonfinite_run} consecutive non-finite losses/gradients at step {done}; "
                            "stopping (the last good state is checkpointed)")
                summary = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
                summary["skipped"] = float(np.sum([m["skipped"] for m in fetched]))
                summary["learning_rate"] = float(lr_schedule(done))
                summary["epoch"] = done / steps_per_epoch
                writer.write_scalars(done, summary, prefix="train/")
                logging.info("%s | loss %.4f", progress.line(done), summary["loss"])
            epoch_done = done % steps_per_epoch == 0
            epoch = done // steps_per_epoch
            if epoch_done and done < total_steps:
                saved_state = par.get_state(state)
                if config.train.eval_every_epochs and epoch % config.train.eval_every_epochs == 0:
                    if selection is not None:
                        chosen = evaluate(config, model, _eval_variables(config, saved_state), selection, mesh)
                        writer.write_scalars(done, chosen, prefix="select/")
                        if chosen["rank1"] > best["rank1"]:
                            best.update(rank1=chosen["rank1"], step=done)
                            best_checkpointer.save(done, saved_state, {},
                                                   {"step": done, "select_rank1": chosen["rank1"]})
                    if selection is not target:
                        metrics = evaluate(config, model, _eval_variables(config, saved_state), target, mesh)
                        writer.write_scalars(done, metrics, prefix="eval/")
                if config.train.checkpoint_every_epochs and epoch % config.train.checkpoint_every_epochs == 0:
                    checkpointer.save(done, saved_state, iterators, {"step": done, "epoch": epoch})
    except BaseException:
        # Keep what was learnt: save the last finished step before re-raising (interrupts included).
        if pending_metrics or step > start_step:
            try:
                if unconsumed is not None:
                    for name, it in iterators.items():
                        it.set_state(unconsumed[name])
                state = par.get_state(state)
                checkpointer.save(int(jax.device_get(state.step)), state, iterators,
                                  {"step": int(jax.device_get(state.step)), "interrupted": True})
                checkpointer.close()
            except Exception as save_error:  # noqa: BLE001 — report, but surface the original error
                logging.error("could not save the interrupted state: %s", save_error)
        writer.close()
        raise

    state = par.get_state(state)
    if total_steps > start_step:
        checkpointer.save(total_steps, state, iterators, {"step": total_steps, "epoch": config.train.num_epochs})
    if best_checkpointer is not None:
        # The last state competes too; then the selected one is what gets evaluated and reported.
        last = evaluate(config, model, _eval_variables(config, state), selection, mesh)
        writer.write_scalars(total_steps, last, prefix="select/")
        if best["step"] is None or last["rank1"] >= best["rank1"]:
            best_checkpointer.save(total_steps, state, {}, {"step": total_steps, "select_rank1": last["rank1"]})
        best_checkpointer.wait()
        state = best_checkpointer.restore_state_only(state)
        logging.info("evaluating the selected checkpoint from step %d", best_checkpointer.latest_step())
        best_checkpointer.close()
    final = evaluate(config, model, _eval_variables(config, state), target, mesh, all_protocols=config.eval.protocols)
    checkpointer.close()
    writer.write_scalars(total_steps, final, prefix="eval/")
    table = results_table(final, f"{config.data.source.name} → {config.data.target.name}")
    if is_main:
        protocols.write_results(workdir, "results", final, table)
    writer.close()
    print(table, flush=True)
    print(f"target rank-1 {100 * final['rank1']:.1f}%, mAP {100 * final['mAP']:.1f}% "
          f"({int(final['num_valid_queries'])} queries)", flush=True)
    return final


def _reference_state(config, model, params, rng: jax.Array, steps_per_epoch: int):
    """TrainState.reference for the reference variant (MS-TCN, its optimiser, the loss weights), else None."""
    if config.variant != "reference":
        return None
    from svreid_jax import steps_reference

    temporal_model = steps_reference.build_temporal_model(config, model.num_classes)
    feature_dim = int(params["bnneck"]["scale"].shape[-1])
    return steps_reference.init_reference_state(config, temporal_model, jax.random.fold_in(rng, 1), steps_per_epoch,
                                                feature_dim)


def _eval_variables(config, state: TrainState) -> dict:
    if config.eval.use_teacher:
        return {"params": state.ema_params, "batch_stats": state.ema_batch_stats}
    return {"params": state.params, "batch_stats": state.batch_stats}


def evaluate_checkpoint(config, workdir: str) -> dict[str, float]:
    """--mode=eval: evaluate the checkpoint of workdir (eval.checkpoint) on the target test split.

    Prints the table and writes <workdir>/eval_results.json and eval_results.md: one row per protocol
    (evaluate(..., all_protocols=eval.protocols)), or with eval.all_splits (iLIDS-VID, PRID) one row per
    split_id 0..9 under their mean ± std. Returns the flat metrics (for all_splits: the means, 'std/<metric>'
    and 'split_<i>/<metric>').
    """
    _log_devices()
    mesh = steps.data_mesh()
    model, variables, ckpt = eval_extract.restore_variables(config, workdir, mesh)
    distance = protocols.DistanceSpec.from_config(config)
    name = config.data.target.name
    if config.eval.all_splits:
        if name not in ("ilidsvid", "prid"):
            raise ValueError(f"eval.all_splits averages the 10 splits of iLIDS-VID and PRID; target {name!r} has none")
        trained_on = config.data.target.options.get("split_id", 0)
        logging.warning("eval.all_splits: one checkpoint, adapted on the training persons of split %d, is tested "
                        "on every split; in the others part of the test persons were its unlabelled target "
                        "training data. The usual protocol trains one model per split.", trained_on)
        result = protocols.evaluate_splits(
            lambda s: eval_extract.load_target(config, workdir, split_id=s),
            lambda tracklets: eval_extract.tracklet_features(config, model, variables, tracklets, mesh),
            distance=distance, max_rank=config.eval.max_rank)
        metrics = result.flat()
    else:
        target = eval_extract.load_target(config, workdir)
        metrics = evaluate(config, model, variables, target, mesh, all_protocols=config.eval.protocols)
    title = f"{config.data.source.name} → {name}"
    table = results_table(metrics, title)
    rows, std = protocols.unflatten(metrics)
    settings = (f"checkpoint {ckpt.directory} step {ckpt.step} ({'EMA teacher' if ckpt.teacher else 'student'}); "
                f"distance: {distance.describe()}; clips: {config.eval.temporal}, {config.eval.seq_len} frames"
                f"{', flip-averaged' if config.eval.flip_average else ''}")
    report = {"title": title, "checkpoint": dataclasses.asdict(ckpt), "distance": distance.describe(),
              "clips": {"temporal": config.eval.temporal, "seq_len": config.eval.seq_len,
                        "flip_average": bool(config.eval.flip_average)},
              "protocols": rows, "metrics": metrics}
    if std is not None:
        report["std"] = std
    if jax.process_index() == 0:
        protocols.write_results(workdir, "eval_results", report, f"{table}\n\n{settings}\n")
    print(table, flush=True)
    print(settings, flush=True)
    return metrics
