"""The training loop: data, model, state, steps, evaluation, logs and checkpoints. No model maths here."""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metrics as clu_metrics
from clu import parameter_overview

from svreid_jax import builders, config_checks, parallel, variants
from svreid_jax.data.records import DatasetSplits
from svreid_jax.evaluation import evaluate as evaluation
from svreid_jax.evaluation import protocols
from svreid_jax.state import learning_rate_schedule
from svreid_jax.utils import progress as progress_lib
from svreid_jax.utils import signals
from svreid_jax.utils.checkpointing import BestCheckpoint, Checkpointer
from svreid_jax.utils.writers import MetricWriter
from svreid_jax.variants import divergence


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
        self.counts: dict[str, int] | None = None  # the guards' counters of the saved state


def summarise_interval(fetched: list[dict]) -> dict[str, float]:
    """The train metrics of one log interval: each averaged over its steps (clu.metrics.Average),
    'skipped', 'diverged' and 'rolled_back' summed (how many steps the non-finite and divergence guards
    rejected, and how many earlier updates they undid), 'loss_median' and the guards' streaks the last
    ones (the guard's reference at the end of the interval, absent while NaN; the rejections since the
    last accepted update)."""
    summed, last = ("skipped", "diverged", "rolled_back"), ("loss_median", "diverged_streak", "nonfinite_streak")
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

    Writes under workdir: metrics.jsonl, tensorboard/, checkpoints/, parameters.txt, results.json, results.md,
    per_query.json.
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


def _stopped_results(workdir: str, status: str, message: str, step: int, counts: dict[str, int]) -> None:
    """results.json / results.md of a run the loop stopped: the reason instead of metrics, so that
    nothing reads them as the result of a finished run; with the guards' counts (`_guard_counts`)."""
    protocols.write_results(workdir, "results",
                            {"status": status, "step": int(step), "message": message, **_guard_counts(counts)},
                            f"**No result: the run stopped ({status}) at step {step}.** {message}\n")


def _guard_counts(counts: dict[str, int]) -> dict[str, int]:
    """What results.json says of the guards over the whole run (resumes included): 'skipped' (steps with
    a non-finite loss or gradient) and 'diverged' (steps whose loss or gradient norm exploded)."""
    return {"skipped": int(counts["skipped_total"]), "diverged": int(counts["diverged_total"])}


@dataclasses.dataclass
class _Run:
    """Everything one training run is built from (`_build_run`), so that the loop and its helpers
    read it instead of rebuilding it."""

    config: Any
    workdir: str
    is_main: bool
    checkpointer: Checkpointer
    writer: MetricWriter
    mesh: Any
    model: Any
    par: parallel.ParallelStep
    streams: builders.TrainStreams
    target: DatasetSplits
    selection: DatasetSplits | None  # model selection's query/gallery (None: the last state is reported)
    best: BestCheckpoint | None
    evaluator: evaluation.Evaluator
    stored_config: dict
    total_steps: int
    lr_schedule: Any

    @property
    def steps_per_epoch(self) -> int:
        return self.streams.steps_per_epoch

    def evaluate(self, state, splits: DatasetSplits, **kwargs) -> dict[str, float]:
        """`splits` evaluated with the state's student (or teacher, eval.use_teacher)."""
        return self.evaluator(self.evaluator.variables(state), splits, **kwargs)

    def rank(self, state, splits: DatasetSplits, **kwargs) -> tuple[dict[str, float], dict | None]:
        """`evaluate` with the primary protocol's per-query outcomes (Evaluator.rank)."""
        return self.evaluator.rank(self.evaluator.variables(state), splits, **kwargs)

    def save(self, step: int, state, **meta) -> None:
        """Start saving `state` (as get_state gives it; the guard's run-time part stays out, its counters
        go to the metadata)."""
        self.checkpointer.save(step, divergence.detach(state), self.streams.iterators,
                               {"step": step, **meta, "counters": divergence.counters(state),
                                "config": self.stored_config})

    def probe(self, placed_state, batch):
        """The placed state with the last update judged (divergence.py: no step follows it to judge it),
        on `batch`, the batch of the step that made it; rolled back if rejected. None: nothing to judge."""
        if batch is None:
            return placed_state
        flag = self.par.put_state(parallel.replicate(jnp.ones((), bool), self.mesh))
        placed_state, metrics = self.par.step(divergence.probing(placed_state, flag), batch)
        m = jax.device_get(metrics)
        if m["rolled_back"] > 0:
            logging.warning("the last update before step %d was rolled back by the %s guard: %s at the parameters "
                            "it produced", int(jax.device_get(placed_state.step).reshape(-1)[0]),
                            "non-finite" if m["skipped"] > 0 else "divergence",
                            f"loss {float(m['loss']):.4g}, gradient norm {float(m['grad_norm']):.4g}")
        return placed_state


def _train_and_evaluate(config, workdir: str, stop: signals.StopOnSignals) -> dict[str, float]:
    run, state = _build_run(config, workdir)
    state, start_step = _resume(run, state)
    epoch_hook = variants.epoch_start(config)
    log = _LogInterval(run, start_step)
    # judged: the batch of the last step, whose update no step has judged yet (Run.probe judges it).
    step, positions, judged = start_step, None, None
    try:
        for step in range(start_step, run.total_steps):
            stop.check()  # a SIGTERM/SIGINT since the last step: save and stop here
            if epoch_hook is not None and step % run.steps_per_epoch == 0:
                # Also on resuming at an epoch boundary: the hook is deterministic, so it recomputes
                # exactly what the uninterrupted run had (a mid-epoch checkpoint carries it already).
                state = _start_epoch(run, epoch_hook, state, step // run.steps_per_epoch)
            # An interrupt inside the step saves the data positions from before its batches, or the
            # resumed run would skip the batches the unfinished step had drawn.
            positions = run.streams.positions()
            batch, bad_frames = run.streams.next()
            state, metrics = run.par.step(state, batch)
            positions, judged = None, batch
            log.add(metrics, bad_frames)
            done = step + 1
            if log.due(done):
                log.write(done)
            if done % run.steps_per_epoch == 0 and done < run.total_steps:
                state, judged = _end_epoch(run, state, done, judged, before_hook=epoch_hook is not None)
        stop.check()  # a signal during the last step: save it like any other, not in the final evaluation
    except BaseException as err:
        stop.saving()  # the grace timer must not interrupt the save below
        saved = _save_on_stop(run, state, err, positions, log, judged,
                              trained=bool(log.pending) or step > start_step)
        _raise_stopped(run, err, saved, step, stop)
    return _finish(run, state, start_step, judged, stop)


def _build_run(config, workdir: str) -> tuple[_Run, Any]:
    """(the run, its fresh train state replicated on the mesh). Refuses another run's checkpoints and
    fetches weights before any data is read."""
    if config.parallel.multihost and not jax.distributed.is_initialized():  # main joins first to lock the workdir
        jax.distributed.initialize()
    parallel.log_devices()
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.train.keep_checkpoints)
    _refuse_other_runs(config, checkpointer)
    checkpointer.remove_partial_saves()  # what a killed or failed save left; this run is the writer
    writer = MetricWriter(workdir, enabled=is_main)
    mesh = parallel.data_mesh()
    builders.initial_weights(config)  # refuse a silent random start, fetch ImageNet weights: before any data
    source, target, selection = builders.prepare_data(config, workdir)
    logging.info("source: %d train tracklets / %d ids; target: %d train, %d query, %d gallery tracklets",
                 len(source.train), source.num_train_pids, len(target.train), len(target.query), len(target.gallery))
    streams = builders.train_streams(config, source, target)
    model = builders.create_model(config, source.num_train_pids)
    state = builders.create_state(config, model, streams.steps_per_epoch, jax.random.PRNGKey(config.seed),
                                  num_target_train=len(target.train))
    if is_main:
        _write_parameter_table(config, workdir, state.params)
    state = parallel.replicate(state, mesh)
    # The loop holds the placed state; par.get_state gives the mesh-replicated layout that checkpoints
    # and evaluation use in every mode (a checkpoint does not depend on the mode).
    par = parallel.parallelize(variants.make_train_step, model, config, mesh)
    stored_config = config_checks.as_json(config)
    best = (BestCheckpoint(os.path.join(workdir, "best"), {"config": stored_config})
            if selection is not None else None)
    run = _Run(config=config, workdir=workdir, is_main=is_main, checkpointer=checkpointer, writer=writer, mesh=mesh,
               model=model, par=par, streams=streams.to_device(par.put_batch, config), target=target,
               selection=selection, best=best, evaluator=evaluation.Evaluator.from_config(config, model, mesh),
               stored_config=stored_config, total_steps=config.train.num_epochs * streams.steps_per_epoch,
               lr_schedule=learning_rate_schedule(config, streams.steps_per_epoch))
    return run, state


def _refuse_other_runs(config, checkpointer: Checkpointer) -> None:
    """Refuse another run's checkpoint before reading data or compiling anything (the restore checks
    again, on the step it actually restores)."""
    for step in checkpointer.steps():
        try:
            meta = checkpointer.read_meta(step)
        except Exception:  # noqa: BLE001 — a damaged step: the restore names it and falls back
            continue
        check_resume(config, checkpointer.directory, step, meta)
        return


def _write_parameter_table(config, workdir: str, params) -> None:
    """The full table (one row per parameter array) to a file; the console gets the total."""
    table_path = os.path.join(workdir, "parameters.txt")
    with open(table_path, "w", encoding="utf-8") as f:
        f.write(parameter_overview.get_parameter_overview(params, include_stats=False) + "\n")
    logging.info("model: %s backbone, %s parameters (table in %s)", config.model.arch,
                 f"{parameter_overview.count_parameters(params):,}", table_path)


def _resume(run: _Run, state) -> tuple[Any, int]:
    """(the placed state to train from, its step): the newest intact checkpoint's, if any."""
    checkpointer = run.checkpointer
    meta = {}
    if checkpointer.steps():
        state, meta = checkpointer.restore(state, run.streams.iterators, set_aside_broken=True,
                                           check=lambda step, meta: check_resume(run.config, checkpointer.directory,
                                                                                 step, meta))
        logging.info("resumed from %s at step %d", checkpointer.directory, int(meta["step"]))
    start_step = int(jax.device_get(state.step))
    # Rows a killed run logged after its last checkpoint are logged again by this one.
    dropped = run.writer.drop_after(start_step, final_rows_at_step=start_step >= run.total_steps)
    if dropped:
        logging.info("metrics.jsonl: dropped %d row(s) logged after step %d, which this run repeats", dropped,
                     start_step)
    logging.info("training %d steps (%d epochs × %d steps) from step %d", run.total_steps,
                 run.config.train.num_epochs, run.steps_per_epoch, start_step)
    # The restored (or fresh) state is the first accepted one; the guard's counts go on from the checkpoint's.
    state = parallel.replicate(divergence.attach(state, meta.get("counters", {})), run.mesh)
    return run.par.put_state(state), start_step


def _start_epoch(run: _Run, epoch_hook, placed_state, epoch: int):
    """The variant's per-epoch state (plus: the target's pseudo-identities and cluster memory),
    computed from the replicated state and placed again like any state."""
    camids = np.asarray([t.camid for t in run.target.train], np.int32)
    # Target identity labels reach training only where a diagnostic's config asks (plus.true_identities).
    labels = ({"identities": np.asarray([t.pid for t in run.target.train], np.int64)}
              if variants.reads_target_labels(run.config) else {})
    state = run.par.get_state(placed_state)
    counts = divergence.counters(state)
    new_state, stats = epoch_hook(run.config, divergence.detach(state),
                                  lambda variables, temporal=None: run.evaluator.features(
                                      variables, run.target.train, temporal=temporal), camids, epoch,
                                  **labels)
    if stats:
        run.writer.write_scalars(epoch * run.steps_per_epoch, stats, prefix="cluster/")
        logging.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in stats.items()))
    # The hook's state is the accepted one from here: a rollback must not undo it.
    new_state = divergence.attach(parallel.replicate(new_state, run.mesh), counts)
    return run.par.put_state(parallel.replicate(new_state, run.mesh))


class _LogInterval:
    """The steps since the last log line: their metrics and undecodable frames; a guard's streak (steps
    it rejected since the last accepted update) at train.max_consecutive_* stops the run."""

    def __init__(self, run: _Run, start_step: int):
        self.run = run
        self.pending: list[dict] = []
        self.bad_frames = 0
        self.progress = progress_lib.Progress(run.total_steps, start_step)

    def add(self, metrics: dict, bad_frames: int) -> None:
        self.pending.append(metrics)
        self.bad_frames += bad_frames

    def due(self, done: int) -> bool:
        return done % self.run.config.train.log_every_steps == 0 or done == self.run.total_steps

    def write(self, done: int) -> None:
        """Log the interval ending at step `done`; raise _Stop when a guard's run reached its limit."""
        t = self.run.config.train
        fetched = jax.device_get(self.pending)
        self.pending = []
        stopping = None
        for i, m in enumerate(fetched):
            at = done - len(fetched) + i + 1
            nonfinite, diverged = int(m.get("nonfinite_streak", 0)), int(m.get("diverged_streak", 0))
            if stopping is None and nonfinite >= t.max_consecutive_nonfinite:
                stopping = _Stop("non_finite", f"{nonfinite} non-finite losses or gradients without an accepted "
                                               f"update between them, at step {at}")
            if stopping is None and diverged >= t.max_consecutive_diverged:
                stopping = _Stop("diverged", f"diverged: {diverged} updates rejected without an accepted one between "
                                             f"them, at step {at}, loss {float(m['loss']):.4g} against a median of "
                                             f"{float(m['loss_median']):.4g} over the last accepted ones "
                                             f"(train.divergence_factor={t.divergence_factor:g})")
        summary = self.summary(fetched, done)
        if self.run.config.data.skip_bad_frames:
            summary["bad_frames"], self.bad_frames = float(self.bad_frames), 0
        self.run.writer.write_scalars(done, summary, prefix="train/")
        logging.info("%s | loss %.4f", self.progress.line(done), summary["loss"])
        if summary.get("diverged", 0) > 0:
            logging.warning("step %d: %d of the last %d step(s) rejected by the divergence guard (loss or gradient "
                            "norm > %g × the median of the last accepted), %d earlier update(s) rolled back; "
                            "%d rejected since the last accepted update, the run stops at %d", done,
                            int(summary["diverged"]), len(fetched), t.divergence_factor,
                            int(summary.get("rolled_back", 0)), int(summary.get("diverged_streak", 0)),
                            t.max_consecutive_diverged)
        if stopping is not None:
            raise stopping

    def summary(self, fetched: list[dict], step: int) -> dict[str, float]:
        summary = summarise_interval(fetched)
        summary["learning_rate"] = float(self.run.lr_schedule(step))
        summary["epoch"] = step / self.run.steps_per_epoch
        return summary


def _end_epoch(run: _Run, placed_state, done: int, judged, before_hook: bool):
    """After an epoch that is not the last: evaluate and checkpoint as train.*_every_epochs say, and
    checkpoint before a variant's epoch hook (a slow one, plus's whole-set clustering, cannot be
    interrupted, so a stop during it loses the hook only). The last update is judged first, so what is
    evaluated and saved is an accepted state. Returns (the placed state, the batch still to judge)."""
    epoch = done // run.steps_per_epoch
    t = run.config.train
    evaluating = t.eval_every_epochs and epoch % t.eval_every_epochs == 0
    saving = before_hook or (t.checkpoint_every_epochs and epoch % t.checkpoint_every_epochs == 0)
    if not (evaluating or saving):
        return placed_state, judged
    placed_state = run.probe(placed_state, judged)
    state = run.par.get_state(placed_state)
    if evaluating:
        if run.selection is not None:
            chosen = run.evaluate(state, run.selection)
            run.writer.write_scalars(done, chosen, prefix="select/")
            run.best.offer(done, divergence.detach(state), chosen["rank1"])
        if run.selection is not run.target:
            run.writer.write_scalars(done, run.evaluate(state, run.target), prefix="eval/")
    if saving:
        run.save(done, state, epoch=epoch)
        if before_hook:
            run.checkpointer.wait()  # on disk before the hook starts: a kill during it keeps this step
    return placed_state, None


def _save_on_stop(run: _Run, placed_state, err: BaseException, positions: dict | None, log: _LogInterval,
                  judged, trained: bool) -> int | None:
    """Keep what was learnt when the loop ends early (a signal, a guard's stop, any error): save the
    last finished step (its update judged first) with the data positions before any unfinished step.
    Returns the saved step, or None when nothing new was saved."""
    if not trained:
        return None
    try:
        if positions is not None:
            run.streams.rewind(positions)
        placed_state = run.probe(placed_state, judged)
        state = run.par.get_state(placed_state)
        saved = int(jax.device_get(state.step))
        if log.pending and not isinstance(err, _Stop):
            # The finished steps since the last log line, so that a stopped run's log is complete.
            run.writer.write_scalars(saved, log.summary(jax.device_get(log.pending), saved), prefix="train/")
        run.checkpointer.wait()
        if saved not in run.checkpointer.steps():  # not already the last scheduled save
            run.save(saved, state, interrupted=True)
        run.checkpointer.close()
        if isinstance(err, _Stop):
            err.counts = divergence.counters(state)  # for results.json
        return saved
    except Exception as save_error:  # noqa: BLE001 — report, but surface the original error
        logging.error("could not save the interrupted state: %s", save_error)
        return None


def _raise_stopped(run: _Run, err: BaseException, saved: int | None, step: int, stop: signals.StopOnSignals):
    """Re-raise how the loop ended: TrainingStopped with the exit code for a guard's stop or a signal
    (a guard's stop also writes results.json saying why), the original error otherwise."""
    where = (f"the last accepted state is saved as {run.checkpointer.directory}/{saved}"
             if isinstance(err, _Stop) and saved is not None else
             f"the last finished step is saved as {run.checkpointer.directory}/{saved}" if saved is not None
             else "nothing new was saved")
    run.writer.close()
    if isinstance(err, _Stop):
        message = f"{err}; {where}"
        if run.is_main:
            counts = err.counts or dict.fromkeys(divergence.COUNTERS, 0)
            _stopped_results(run.workdir, err.status, message, saved if saved is not None else step, counts)
        raise TrainingStopped(f"training stopped: {message}", EXIT_STOPPED) from None
    if stop.signum is not None and isinstance(err, (signals.StopRequested, KeyboardInterrupt)):
        raise TrainingStopped(f"stopped by {stop.name} at step {saved if saved is not None else step}; {where}; "
                              "run the same command to resume", 128 + stop.signum) from None
    raise err


def _finish(run: _Run, placed_state, start_step: int, judged, stop: signals.StopOnSignals) -> dict[str, float]:
    """The last update judged, the last checkpoint (written before anything else, and waited for: a
    signal during the final evaluation finds it on disk), model selection's pick, the final evaluation
    on the target test split (every protocol with eval.protocols), results.json / results.md (and
    per_query.json, each query's outcome under the primary protocol: protocols.per_query) and the
    printed table. A final state that follows rejected updates raises TrainingStopped (exit 3) after
    writing its results, marked."""
    config = run.config
    state = run.par.get_state(run.probe(placed_state, judged))
    counts = divergence.counters(state)
    try:
        if run.total_steps > start_step:
            with stop.protected():
                run.save(run.total_steps, state, epoch=config.train.num_epochs)
                run.checkpointer.wait()
        state = divergence.detach(state)
        if run.best is not None:
            state = _select(run, state)
        final, outcomes = run.rank(state, run.target, all_protocols=config.eval.protocols)
    except BaseException:
        # Interrupted (a signal's grace ran out) or failed: the saves in flight still complete, and the
        # original error is what surfaces (a failed save's is said once).
        with stop.protected(), contextlib.suppress(Exception):
            _close_checkpoints(run)
        raise
    with stop.protected():
        _close_checkpoints(run)
    run.writer.write_scalars(run.total_steps, final, prefix="eval/")
    table = evaluation.results_table(final, f"{config.data.source.name} → {config.data.target.name}")
    results, mark = _final_results(run, final, counts)
    if run.is_main:
        protocols.write_results(run.workdir, "results", results, table + (f"\n**{mark}**\n" if mark else ""))
        if outcomes is not None:
            protocols.write_per_query(run.workdir, "per_query", outcomes)
    run.writer.close()
    print(table, flush=True)
    print(f"target rank-1 {100 * final['rank1']:.1f}%, mAP {100 * final['mAP']:.1f}% "
          f"({int(final['num_valid_queries'])} queries)", flush=True)
    if mark:
        logging.warning("%s", mark)
        raise TrainingStopped(f"training finished, but {mark[0].lower()}{mark[1:]}", EXIT_STOPPED)
    return results


def _close_checkpoints(run: _Run) -> None:
    """Wait for the last saves (the run's and model selection's) and release orbax's threads."""
    try:
        run.checkpointer.close()
    finally:
        if run.best is not None:
            run.best.close()


def _final_results(run: _Run, final: dict, counts: dict[str, int]) -> tuple[dict, str]:
    """(results.json's content, the mark of a final state that follows rejected updates or '').

    results.json holds the metrics, the guards' counts (`_guard_counts`), the step model selection
    picked ('selected_step') or why selection is off ('model_selection'), and, when the final state
    follows updates the guards rejected (none accepted after them), 'status' and 'message' saying so."""
    results = {**final, **_guard_counts(counts)}
    if run.best is not None:
        results["selected_step"] = int(run.best.step)
    elif run.config.train.select_holdout_ids > 0 and not run.config.train.select_on_target_test:
        results["model_selection"] = ("off: no source identity has tracklets in two cameras to hold out "
                                      "(docs/METHOD.md §7.6); the last state is reported")
    diverged, nonfinite = counts["diverged_streak"], counts["nonfinite_streak"]
    if not (diverged or nonfinite):
        return results, ""
    status = "diverged" if diverged else "non_finite"
    why = ("its loss or gradient norm exploded (> train.divergence_factor × the median of the accepted ones)"
           if diverged else "its loss or gradient was not finite")
    mark = (f"The final state follows {diverged + nonfinite} rejected step(s) with no accepted update after them "
            f"({status}: {why}); the guards rolled back to the last accepted state, which these metrics are "
            f"of ({counts['diverged_total']} diverged, {counts['skipped_total']} non-finite steps in the run). "
            "Lower optimizer.learning_rate or check the data")
    return {**results, "status": status, "message": mark}, mark


def _select(run: _Run, state):
    """Model selection's pick among the offered states and the last one (which wins ties)."""
    last = run.evaluate(state, run.selection)
    run.writer.write_scalars(run.total_steps, last, prefix="select/")
    run.best.offer(run.total_steps, state, last["rank1"], ties=True)
    state = run.best.restore(state)
    logging.info("evaluating the selected checkpoint from step %d", run.best.step)
    return state
