"""The training loop: data, model, state, steps, evaluation, logs and checkpoints. No model maths here."""
from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from clu import metrics as clu_metrics
from clu import parameter_overview

from svreid_jax import builders, parallel, variants
from svreid_jax.data import pipeline
from svreid_jax.evaluation import evaluate as evaluation
from svreid_jax.evaluation import protocols
from svreid_jax.state import learning_rate_schedule
from svreid_jax.utils import progress as progress_lib
from svreid_jax.utils.checkpointing import BestCheckpoint, Checkpointer
from svreid_jax.utils.writers import MetricWriter


def summarise_interval(fetched: list[dict]) -> dict[str, float]:
    """The train metrics of one log interval: each averaged over its steps (clu.metrics.Average),
    'skipped' summed (how many updates the non-finite guard dropped)."""
    summary = {k: float(clu_metrics.Average.from_model_output(np.stack([np.asarray(m[k]) for m in fetched])).compute())
               for k in fetched[-1]}
    summary["skipped"] = float(np.sum([m["skipped"] for m in fetched]))
    return summary


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Train as configured, evaluate on the target test split at the end, return the final metrics.

    Writes under workdir: metrics.jsonl, tensorboard/, checkpoints/, parameters.txt, results.json, results.md.
    Resumes automatically from the latest checkpoint in workdir.
    """
    variants.check_config(config)  # bad settings fail here, before any data is read
    if config.parallel.multihost:
        jax.distributed.initialize()
    parallel.log_devices()
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    writer = MetricWriter(workdir, enabled=is_main)
    mesh = parallel.data_mesh()

    builders.initial_weights(config)  # refuse a silent random start, fetch ImageNet weights: before any data
    source, target, selection = builders.prepare_data(config, workdir)
    num_classes = source.num_train_pids
    logging.info("source: %d train tracklets / %d ids; target: %d train, %d query, %d gallery tracklets",
                 len(source.train), num_classes, len(target.train), len(target.query), len(target.gallery))

    process = dict(process_index=jax.process_index(), process_count=jax.process_count())
    source_it, steps_per_epoch = pipeline.source_stream(
        source.train, num_identities=config.batch.num_identities, num_instances=config.batch.num_instances,
        spec=builders.clip_spec(config, train=True), seed=config.seed, num_threads=config.data.num_threads,
        prefetch=config.data.prefetch, num_workers=config.data.num_workers, **process)
    if config.train.steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, config.train.steps_per_epoch)
    identity_balanced = config.data.target_sampling == "identity"
    if identity_balanced:
        logging.warning("data.target_sampling='identity' samples target batches by target ground-truth "
                        "labels (the reference's behaviour, docs/METHOD.md §8 D7): this is not unsupervised.")
    target_it = pipeline.target_stream(
        target.train, batch_size=config.batch.target_size, spec=builders.clip_spec(config, train=True),
        seed=config.seed, num_threads=config.data.num_threads, prefetch=config.data.prefetch,
        identity_balanced=identity_balanced, num_instances=config.batch.num_instances,
        num_workers=config.data.num_workers, views_per_tracklet=config.data.target_views, **process)
    uses_target = variants.uses_target(config)
    total_steps = config.train.num_epochs * steps_per_epoch
    model = builders.create_model(config, num_classes)
    state = builders.create_state(config, model, steps_per_epoch, jax.random.PRNGKey(config.seed))
    if is_main:
        # The full table (one row per parameter array) goes to a file; the console gets the total.
        table_path = os.path.join(workdir, "parameters.txt")
        with open(table_path, "w", encoding="utf-8") as f:
            f.write(parameter_overview.get_parameter_overview(state.params, include_stats=False) + "\n")
        logging.info("model: %s backbone, %s parameters (table in %s)", config.model.arch,
                     f"{parameter_overview.count_parameters(state.params):,}", table_path)
    state = parallel.replicate(state, mesh)
    # `state` holds the placed state while training; par.get_state gives the mesh-replicated layout
    # that checkpoints and evaluation use in every mode (a checkpoint does not depend on the mode).
    par = parallel.parallelize(variants.make_train_step, model, config, mesh)

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

    best = BestCheckpoint(os.path.join(workdir, "best")) if selection is not None else None
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
                summary = summarise_interval(fetched)
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
                        chosen = evaluation.evaluate(config, model, builders.eval_variables(config, saved_state),
                                                     selection, mesh)
                        writer.write_scalars(done, chosen, prefix="select/")
                        best.offer(done, saved_state, chosen["rank1"])
                    if selection is not target:
                        metrics = evaluation.evaluate(config, model, builders.eval_variables(config, saved_state),
                                                      target, mesh)
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
    if best is not None:
        # The last state competes too (and wins ties); then the selected one is evaluated and reported.
        last = evaluation.evaluate(config, model, builders.eval_variables(config, state), selection, mesh)
        writer.write_scalars(total_steps, last, prefix="select/")
        best.offer(total_steps, state, last["rank1"], ties=True)
        state = best.restore(state)
        logging.info("evaluating the selected checkpoint from step %d", best.step)
        best.close()
    final = evaluation.evaluate(config, model, builders.eval_variables(config, state), target, mesh,
                                all_protocols=config.eval.protocols)
    checkpointer.close()
    writer.write_scalars(total_steps, final, prefix="eval/")
    table = evaluation.results_table(final, f"{config.data.source.name} → {config.data.target.name}")
    if is_main:
        protocols.write_results(workdir, "results", final, table)
    writer.close()
    print(table, flush=True)
    print(f"target rank-1 {100 * final['rank1']:.1f}%, mAP {100 * final['mAP']:.1f}% "
          f"({int(final['num_valid_queries'])} queries)", flush=True)
    return final
