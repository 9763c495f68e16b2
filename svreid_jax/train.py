"""The training loop: data, model, state, steps, evaluation, logs and checkpoints. No model maths here."""
from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from clu import metrics as clu_metrics
from clu import parameter_overview

from svreid_jax import builders, config_checks, parallel, variants
from svreid_jax.data import pipeline
from svreid_jax.evaluation import evaluate as evaluation
from svreid_jax.evaluation import features as features_lib
from svreid_jax.evaluation import protocols
from svreid_jax.state import learning_rate_schedule
from svreid_jax.utils import progress as progress_lib
from svreid_jax.utils import signals
from svreid_jax.utils.checkpointing import BestCheckpoint, Checkpointer
from svreid_jax.utils.writers import MetricWriter


# Exit codes of the command line for a run the loop stopped (main.py): a signal gives 128 + its
# number, as a shell reports a process it killed.
EXIT_STOPPED = 3


class TrainingStopped(RuntimeError):
    """The loop stopped the run before its end, with the last good state checkpointed: a signal
    (SIGTERM/SIGINT), too many non-finite updates, or divergence. The message is one line saying why,
    at which step and where the checkpoint is; `exit_code` is what the command line exits with."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class _Stop(Exception):
    """The loop's own decision to stop (non-finite or diverged updates); `status` marks the results."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def summarise_interval(fetched: list[dict]) -> dict[str, float]:
    """The train metrics of one log interval: each averaged over its steps (clu.metrics.Average),
    'skipped' and 'diverged' summed (how many updates the non-finite and divergence guards dropped),
    'loss_median' the last one (the guard's reference at the end of the interval; absent while NaN)."""
    summed, last = ("skipped", "diverged"), ("loss_median",)
    summary = {k: float(clu_metrics.Average.from_model_output(np.stack([np.asarray(m[k]) for m in fetched])).compute())
               for k in fetched[-1] if k not in summed + last}
    for k in summed:
        if k in fetched[-1]:
            summary[k] = float(np.sum([m[k] for m in fetched]))
    for k in last:
        if k in fetched[-1] and np.isfinite(fetched[-1][k]):
            summary[k] = float(fetched[-1][k])
    return summary


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Train as configured, evaluate on the target test split at the end, return the final metrics.

    Writes under workdir: metrics.jsonl, tensorboard/, checkpoints/, parameters.txt, results.json, results.md.
    Resumes automatically from the newest intact checkpoint in workdir, if its stored config agrees.
    Config problems raise config_checks.ConfigError before any data is read. SIGTERM/SIGINT, too many
    non-finite or diverged updates raise TrainingStopped after checkpointing the last good state
    (results.json then says why, without metrics).
    """
    config_checks.validate(config)
    variants.check_config(config)  # bad settings fail here, before any data is read
    with signals.StopOnSignals(config.train.stop_grace_sec) as stop:
        try:
            return _train_and_evaluate(config, workdir, stop)
        except (KeyboardInterrupt, signals.StopRequested):
            if stop.signum is None:
                raise
            # Before the first step or during the final evaluation: the checkpoints are as they were.
            raise TrainingStopped(f"stopped by {stop.name} outside the training steps; the checkpoints under "
                                  f"{os.path.join(workdir, 'checkpoints')} are as they were; run the same command "
                                  "to go on", 128 + stop.signum) from None


def check_resume(config, directory: str, step: int, meta: dict) -> list[tuple[str, object, object]]:
    """Refuse (config_checks.ConfigError) to resume checkpoint `step` of `directory` when the config it
    was written with differs in a field that changes the run (config_checks.resume_changes), unless
    train.allow_resume_changes; then the changes are returned and logged. A checkpoint written before
    configs were stored passes with a warning."""
    if "config" not in meta:
        logging.warning("checkpoint step %d stores no config (written before configs were stored); resuming "
                        "without comparing", step)
        return []
    changes = config_checks.resume_changes(meta["config"], config)
    if changes and not config.train.allow_resume_changes:
        raise config_checks.ConfigError(
            f"{directory}/{step} was written by a run whose config differs in "
            f"{config_checks.describe_changes(changes)}; resuming would continue that run with other settings. "
            "Use another --workdir, undo the change, or resume anyway with --config.train.allow_resume_changes=True")
    if changes:
        logging.warning("resuming with a changed config (train.allow_resume_changes): %s",
                        config_checks.describe_changes(changes))
    return changes


def _stopped_results(workdir: str, status: str, message: str, step: int) -> None:
    """results.json / results.md of a run the loop stopped: the reason instead of metrics, so that
    nothing reads them as the result of a finished run."""
    protocols.write_results(workdir, "results", {"status": status, "step": int(step), "message": message},
                            f"**No result: the run stopped ({status}) at step {step}.** {message}\n")


def _train_and_evaluate(config, workdir: str, stop: signals.StopOnSignals) -> dict[str, float]:
    if config.parallel.multihost:
        jax.distributed.initialize()
    parallel.log_devices()
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.train.keep_checkpoints)
    stored_config = config_checks.as_json(config)
    # Refuse another run's checkpoint before reading data or compiling anything (the restore below
    # checks again, on the step it actually restores).
    for step in checkpointer.steps():
        try:
            meta = checkpointer.read_meta(step)
        except Exception:  # noqa: BLE001 — a damaged step: the restore names it and falls back
            continue
        check_resume(config, checkpointer.directory, step, meta)
        break
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
    state = builders.create_state(config, model, steps_per_epoch, jax.random.PRNGKey(config.seed),
                                  num_target_train=len(target.train))
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
    # The count of frames the pipeline could not decode (data.skip_bad_frames) stays on the host; the
    # loop takes it out before the step.
    def place_source(b):
        return {**par.put_batch({"video": b["video"], "pid": b["pid"]}), "bad_frames": b["bad_frames"]}

    def place_target(b):
        # An unused target is cut to one clip per device before the transfer.
        video = b["video"] if uses_target else b["video"][: jax.local_device_count()]
        # 'index' (the tracklet's position in target.train) is how the plus variant finds a clip's
        # pseudo-label; 'pid' never leaves the host.
        placed = {"video": video, "camid": b["camid"][: len(video)], "index": b["index"][: len(video)]}
        return {**par.put_batch(placed), "bad_frames": b["bad_frames"]}

    source_it = pipeline.prefetch_to_device(source_it, config.data.device_prefetch, place_source)
    target_it = pipeline.prefetch_to_device(target_it, config.data.device_prefetch, place_target)

    iterators = {"source_iter": source_it, "target_iter": target_it}
    if checkpointer.steps():
        state, meta = checkpointer.restore(state, iterators, set_aside_broken=True,
                                           check=lambda step, meta: check_resume(config, checkpointer.directory,
                                                                                 step, meta))
        logging.info("resumed from %s at step %d", checkpointer.directory, int(meta["step"]))
    start_step = int(jax.device_get(state.step))
    # Rows a killed run logged after its last checkpoint are logged again by this one.
    dropped = writer.drop_after(start_step, final_rows_at_step=start_step >= total_steps)
    if dropped:
        logging.info("metrics.jsonl: dropped %d row(s) logged after step %d, which this run repeats", dropped,
                     start_step)

    state = par.put_state(state)
    progress = progress_lib.Progress(total_steps, start_step)
    lr_schedule = learning_rate_schedule(config, steps_per_epoch)
    logging.info("training %d steps (%d epochs × %d steps) from step %d", total_steps,
                 config.train.num_epochs, steps_per_epoch, start_step)

    epoch_hook = variants.epoch_start(config)
    target_camids = np.asarray([t.camid for t in target.train], np.int32)

    def start_epoch(placed_state, epoch: int):
        # The variant's per-epoch state (plus: the target's pseudo-identities and cluster memory),
        # computed from the replicated state and placed again like any state.
        new_state, stats = epoch_hook(
            config, par.get_state(placed_state),
            lambda variables: features_lib.tracklet_features(config, model, variables, target.train, mesh),
            target_camids, epoch)
        if stats:
            writer.write_scalars(epoch * steps_per_epoch, stats, prefix="cluster/")
            logging.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in stats.items()))
        return par.put_state(parallel.replicate(new_state, mesh))

    best = (BestCheckpoint(os.path.join(workdir, "best"), {"config": stored_config})
            if selection is not None else None)
    pending_metrics: list[dict] = []
    bad_frames = 0
    nonfinite_run = diverged_run = 0
    step = start_step
    unconsumed = None
    try:
        for step in range(start_step, total_steps):
            stop.check()  # a SIGTERM/SIGINT since the last step: save and stop here
            if epoch_hook is not None and step % steps_per_epoch == 0:
                # Also on resuming at an epoch boundary: the hook is deterministic, so it recomputes
                # exactly what the uninterrupted run had (a mid-epoch checkpoint carries it already).
                state = start_epoch(state, step // steps_per_epoch)
            # Data positions before this step's batches: an interrupt inside the step must save these,
            # or the resumed run would skip the batches the unfinished step had drawn.
            unconsumed = {name: it.get_state() for name, it in iterators.items()}
            # The target stream advances even when no loss reads it, so every variant of a config sees
            # the same source batches.
            batch = {"source": next(source_it), "target": next(target_it)}
            bad_frames += sum(int(b.pop("bad_frames", 0)) for b in batch.values())
            state, metrics = par.step(state, batch)
            unconsumed = None
            pending_metrics.append(metrics)
            done = step + 1
            if done % config.train.log_every_steps == 0 or done == total_steps:
                fetched = jax.device_get(pending_metrics)
                pending_metrics = []
                stopping = None
                for i, m in enumerate(fetched):
                    at = done - len(fetched) + i + 1
                    nonfinite_run = nonfinite_run + 1 if m["skipped"] > 0 else 0
                    diverged_run = diverged_run + 1 if m.get("diverged", 0) > 0 else 0
                    if stopping is None and nonfinite_run >= config.train.max_consecutive_nonfinite:
                        stopping = _Stop("non_finite", f"{nonfinite_run} consecutive non-finite losses or gradients "
                                                       f"at step {at}")
                    if stopping is None and diverged_run >= config.train.max_consecutive_diverged:
                        stopping = _Stop("diverged", f"diverged: {diverged_run} consecutive updates skipped at step {at}, "
                                                     f"loss {float(m['loss']):.4g} against a median of "
                                                     f"{float(m['loss_median']):.4g} over the last accepted ones "
                                                     f"(train.divergence_factor={config.train.divergence_factor:g})")
                summary = summarise_interval(fetched)
                summary["learning_rate"] = float(lr_schedule(done))
                summary["epoch"] = done / steps_per_epoch
                if config.data.skip_bad_frames:
                    summary["bad_frames"], bad_frames = float(bad_frames), 0
                writer.write_scalars(done, summary, prefix="train/")
                logging.info("%s | loss %.4f", progress.line(done), summary["loss"])
                if summary.get("diverged", 0) > 0:
                    logging.warning("step %d: %d update(s) of the last %d skipped by the divergence guard (loss or "
                                    "gradient norm > %g × the median of the last accepted; %d in a row, the run "
                                    "stops at %d)", done, int(summary["diverged"]), len(fetched),
                                    config.train.divergence_factor, diverged_run, config.train.max_consecutive_diverged)
                if stopping is not None:
                    raise stopping
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
                    checkpointer.save(done, saved_state, iterators,
                                      {"step": done, "epoch": epoch, "config": stored_config})
    except BaseException as err:
        stop.saving()
        # Keep what was learnt: save the last finished step before re-raising (interrupts included).
        saved = None
        if pending_metrics or step > start_step:
            try:
                if unconsumed is not None:
                    for name, it in iterators.items():
                        it.set_state(unconsumed[name])
                state = par.get_state(state)
                saved = int(jax.device_get(state.step))
                if pending_metrics and not isinstance(err, _Stop):
                    # The finished steps since the last log line, so that a stopped run's log is complete.
                    summary = summarise_interval(jax.device_get(pending_metrics))
                    summary.update(learning_rate=float(lr_schedule(saved)), epoch=saved / steps_per_epoch)
                    writer.write_scalars(saved, summary, prefix="train/")
                checkpointer.wait()
                if saved not in checkpointer.steps():  # not already the last scheduled save
                    checkpointer.save(saved, state, iterators,
                                      {"step": saved, "interrupted": True, "config": stored_config})
                checkpointer.close()
            except Exception as save_error:  # noqa: BLE001 — report, but surface the original error
                saved = None
                logging.error("could not save the interrupted state: %s", save_error)
        where = (f"the state without the skipped updates is saved as {checkpointer.directory}/{saved}"
                 if isinstance(err, _Stop) and saved is not None else
                 f"the last finished step is saved as {checkpointer.directory}/{saved}" if saved is not None
                 else "nothing new was saved")
        if isinstance(err, _Stop):
            message = f"{err}; {where}"
            if is_main:
                _stopped_results(workdir, err.status, message, saved if saved is not None else step)
            writer.close()
            raise TrainingStopped(f"training stopped: {message}", EXIT_STOPPED) from None
        writer.close()
        if stop.signum is not None and isinstance(err, (signals.StopRequested, KeyboardInterrupt)):
            raise TrainingStopped(f"stopped by {stop.name} at step {saved if saved is not None else step}; {where}; "
                                  "run the same command to resume", 128 + stop.signum) from None
        raise

    state = par.get_state(state)
    if total_steps > start_step:
        checkpointer.save(total_steps, state, iterators,
                          {"step": total_steps, "epoch": config.train.num_epochs, "config": stored_config})
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
