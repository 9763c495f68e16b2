"""Faults a real run meets, injected into micro demo runs (configs/demo.py:paper,micro, 2 steps per epoch),
and what the run must do about each: SIGTERM mid-run and kill -9 (bitwise resume, no repeated metrics
rows), a truncated newest checkpoint (fallback to the older one, in training and --mode=eval), a
failing checkpoint write, lr=1e6 (stopped and marked diverged), a corrupt JPEG (named by
`data.check --frames`, one line in training, or skipped and counted), a .png frame, an unknown config
field, a changed config on resume, and the loop's own decisions (the non-finite stop, model selection).

Every run here compiles the same micro step as the other end-to-end tests (the session's compilation
cache, tests/conftest.py, makes that cheap) except the lr=1e6 one.
"""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

import child_processes
from configs import demo
from svreid_jax import builders, parallel, train
from svreid_jax.config_checks import ConfigError
from svreid_jax.data import check, datasets, decode
from svreid_jax.data import demo as demo_data
from svreid_jax.data.records import FrameError
from svreid_jax.evaluation import evaluate as evaluation
from svreid_jax.utils.checkpointing import BestCheckpoint, CheckpointError, Checkpointer, cause

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 20  # × 2 steps: long enough for a signal sent after step 14 to land before the end
LAST = 2 * EPOCHS


def _config(data_root, **fields):
    """The faults' config: micro, EPOCHS epochs, checkpoints every 5 epochs (10 steps); `fields` as
    {'train.num_epochs': 3, ...}."""
    config = demo.get_config("paper,micro")
    config.data.demo_root = str(data_root)
    config.train.num_epochs = EPOCHS
    config.train.checkpoint_every_epochs = 5
    for path, value in fields.items():
        section, _, leaf = path.rpartition(".")
        node = config
        for part in section.split("."):
            node = node[part]
        node[leaf] = value
    return config


def _cli(workdir, data_root, *extra):
    return [sys.executable, "-m", "svreid_jax.main", "--config=configs/demo.py:paper,micro", f"--workdir={workdir}",
            f"--config.data.demo_root={data_root}", f"--config.train.num_epochs={EPOCHS}",
            "--config.train.checkpoint_every_epochs=5", *extra]


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu")


def _saved_state(workdir, step, folder="checkpoints"):
    manager = ocp.CheckpointManager(os.path.join(workdir, folder))
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return restored["state"]


def _assert_same(a, b):
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    assert len(flat_a) == len(flat_b)
    for path, value in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_b[path]), np.asarray(value), err_msg=jax.tree_util.keystr(path))


def _train_rows(workdir):
    return [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in line]


def _run_until(cmd, text, timeout=300):
    """Start `cmd`, return (process, stderr so far) once a stderr line contains `text`."""
    proc = child_processes.popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            return proc, seen
    proc.wait(timeout=timeout)
    raise AssertionError(f"{text!r} never appeared (exit {proc.returncode}):\n{''.join(seen[-30:])}")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_data")
    demo_data.ensure(str(root), **demo.get_config("paper,micro").data.demo_options.to_dict())
    return root


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    """An uninterrupted run: checkpoints at 30 and 40 (LAST) kept, the reference for every resume."""
    workdir = tmp_path_factory.mktemp("faults_straight")
    train.train_and_evaluate(_config(data_root), str(workdir))
    return workdir


def _copy_run(straight, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(straight, workdir)
    return workdir


# --- preemption: kill -9, then SIGTERM, then resume ------------------------------------------------


@pytest.mark.slow  # about 45 s; the default stage keeps its 15-minute budget
def test_kill_then_sigterm_then_resume_is_bitwise_and_logs_each_step_once(straight, data_root, tmp_path):
    workdir = tmp_path / "run"
    # kill -9 once step 12 is logged and checkpoint 10 is complete: rows after 10 were logged after it.
    proc, _ = _run_until(_cli(workdir, data_root), "step 12/")
    for _ in range(600):
        if Checkpointer(str(workdir / "checkpoints")).steps():
            break
        time.sleep(0.1)
    proc.kill()
    proc.communicate()
    latest = Checkpointer(str(workdir / "checkpoints")).steps()[0]
    assert max(_train_rows(workdir)) > latest

    # The rerun resumes from there; SIGTERM once it has logged step 14 (steps 15..40 still to go).
    proc, _ = _run_until(_cli(workdir, data_root), "step 14/")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    last = err.strip().splitlines()[-1]
    prefix = "svreid_jax: stopped by SIGTERM at step "
    assert last.startswith(prefix), err[-3000:]
    stopped = int(last[len(prefix):].split(";")[0])
    assert 14 <= stopped < LAST
    assert last == (f"{prefix}{stopped}; the last finished step is saved as {workdir}/checkpoints/{stopped}; "
                    "run the same command to resume")
    # The data positions are the batches consumed, so the resumed run draws the next ones.
    for stream in ("source_iter", "target_iter"):
        saved = json.load(open(workdir / "checkpoints" / str(stopped) / stream / "process_0-of-1.json"))
        assert saved == {"next_index": stopped}, (stream, saved)

    train.train_and_evaluate(_config(data_root), str(workdir))
    _assert_same(_saved_state(straight, LAST), _saved_state(workdir, LAST))
    assert _train_rows(workdir) == list(range(1, LAST + 1))  # no step logged twice after the kill -9


# --- damaged and unwritable checkpoints -----------------------------------------------------------


def _truncate_largest(step_dir):
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 2)


@pytest.mark.slow  # about 40 s: two runs; the default stage keeps its 15-minute budget
def test_truncated_newest_checkpoint_falls_back_in_eval_and_training(straight, data_root, tmp_path, caplog):
    workdir = _copy_run(straight, tmp_path)
    _truncate_largest(workdir / "checkpoints" / str(LAST))
    config = _config(data_root, **{"eval.checkpoint": "latest"})

    # --mode=eval's restore takes step 30 and names the step it skipped, with the cause.
    _, _, info = builders.restore_variables(config, str(workdir))
    assert info.step == 30
    warnings = [r.getMessage() for r in caplog.records if "checkpoint step" in r.getMessage()]
    assert warnings[0].startswith(f"checkpoint step {LAST} cannot be restored (ValueError: OUT_OF_RANGE")
    assert warnings[0].endswith("; trying step 30")
    assert warnings[1].startswith(f"skipped checkpoint step {LAST} (ValueError: OUT_OF_RANGE")
    assert warnings[1].endswith(f": left in place at {workdir}/checkpoints/{LAST}")

    # Training sets the broken step aside, resumes from 30 and ends where the uninterrupted run did.
    caplog.clear()
    train.train_and_evaluate(_config(data_root), str(workdir))
    assert os.path.isdir(workdir / "checkpoints" / f"{LAST}.unreadable")
    assert any(r.getMessage().endswith(f": set aside as {workdir}/checkpoints/{LAST}.unreadable")
               for r in caplog.records)
    _assert_same(_saved_state(straight, LAST), _saved_state(workdir, LAST))

    # No intact step left: one line naming the folder and each step's cause.
    for step in (30, LAST):
        _truncate_largest(workdir / "checkpoints" / str(step))
    with pytest.raises(CheckpointError) as err:
        builders.restore_variables(config, str(workdir))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"no checkpoint under {workdir}/checkpoints can be restored: step {LAST}: ValueError: ")
    assert f"; step 30: ValueError: " in message and message.endswith("move the folder away to start over)")
    # Training says the same, and renames nothing: when no step restores, the code may be what changed.
    with pytest.raises(CheckpointError, match="no checkpoint under .* can be restored: step 40: "):
        train.train_and_evaluate(_config(data_root), str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["30", str(LAST), f"{LAST}.unreadable"]


def test_checkpoint_cause_keeps_the_reason_and_drops_tensorstores_spec():
    # The two forms orbax raised for the same 'disk full' in the test below (which one depends on
    # which array's write fails first): the plain write error, and the same wrapped in the opening of
    # the zarr driver with the array's whole spec appended.
    reason = ('Error writing "params.backbone.bn1.bias/0" in OCDBT database at local file "/tmp/run/'
              'checkpoints/50.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/": Failed '
              'writing: "/tmp/run/checkpoints/50.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.'
              'process_0/d/98d7b0b9544da4127f75741166280b0a": Failed to write 243342 bytes to file 9: File '
              "too large [os_error_code='27']")
    spec = (" [tensorstore_spec='{\"driver\":\"zarr\",\"metadata\":{\"compressor\":{\"id\":\"zstd\","
            "\"level\":1},\"shape\":[16]},\"open\":true,\"recheck_cached_data\":false}']")
    for text in (f"OUT_OF_RANGE: {reason}", f'OUT_OF_RANGE: Error opening "zarr" driver: {reason}{spec}'):
        try:
            try:
                raise ValueError(text)
            except ValueError as inner:
                raise RuntimeError("orbax's own wrapper\nsecond line") from inner
        except RuntimeError as err:
            said = cause(err)
        assert said.startswith("ValueError: OUT_OF_RANGE: Error ") and len(said) <= 240, said
        assert said.endswith("File too large [os_error_code='27']"), said
        assert "tensorstore_spec" not in said
    assert cause(OSError(28, "No space left on device")) == "OSError: [Errno 28] No space left on device"


@pytest.mark.slow  # about 20 s: a run; the default stage keeps its 15-minute budget
def test_failing_checkpoint_write_names_the_cause_and_keeps_the_previous_step(straight, data_root, tmp_path):
    workdir = _copy_run(straight, tmp_path)

    # Five more epochs, and files limited to 120 kB, a 'disk full' for the checkpoint's data files (the
    # micro state's are ≥ 190 kB; Python ignores SIGXFSZ, so a write past the limit fails with EFBIG):
    # the save at step 50 fails.
    cli = _cli(workdir, data_root, f"--config.train.num_epochs={EPOCHS + 5}")
    limited = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (120_000, 120_000)); "
               "sys.argv = ['svreid_jax.main'] + sys.argv[1:]; runpy.run_module('svreid_jax.main', run_name='__main__')")
    done = child_processes.run([sys.executable, "-c", limited, *cli[3:]], cwd=ROOT, env=_env(),
                               capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    # orbax's writer threads may still print their own tracebacks of the failure around ours, at exit,
    # and may have left a line unfinished when ours was written.
    ours = [line[line.index("svreid_jax: "):] for line in done.stderr.splitlines() if "svreid_jax: " in line]
    assert len(ours) == 1, done.stderr[-3000:]
    last = ours[0]
    assert last.startswith(f"svreid_jax: checkpoint error: could not write checkpoint step {LAST + 10} to "
                           f"{workdir}/checkpoints: ValueError: "), last
    assert "File too large" in last and last.endswith(f"the newest checkpoint left is step {LAST} in "
                                                      f"{workdir}/checkpoints")
    reader = Checkpointer(str(workdir / "checkpoints"))
    step, _, state = reader.restore_saved()
    reader.close()
    assert step == LAST
    _assert_same(_saved_state(straight, LAST), state)


# --- divergence and the loop's stops --------------------------------------------------------------


@pytest.mark.slow  # about 20 s; tests/test_faults_training.py covers the rollback in the default stage
def test_exploding_learning_rate_stops_marked_diverged(data_root, tmp_path):
    workdir = tmp_path / "run"
    config = _config(data_root, **{"optimizer.learning_rate": 1e6, "train.max_consecutive_diverged": 2,
                                   "train.num_epochs": 3})
    with pytest.raises(train.TrainingStopped) as err:
        train.train_and_evaluate(config, str(workdir))
    assert err.value.exit_code == train.EXIT_STOPPED
    message = str(err.value)
    # Update 0 (lr 1e6 · warm-up factor) wrecks the weights: step 1's loss rejects it and the initial
    # state comes back; step 2 is at those again, and step 3 rejects update 2 the same way.
    assert message.startswith("training stopped: diverged: 2 updates rejected without an accepted one between "
                              "them, at step 4, loss ")
    assert message.endswith(f"(train.divergence_factor=10); the last accepted state is saved as "
                            f"{workdir}/checkpoints/4")
    results = json.load(open(workdir / "results.json"))
    assert results["status"] == "diverged" and results["step"] == 4 and "rank1" not in results
    assert results["diverged"] == 2 and results["skipped"] == 0
    assert "No result" in open(workdir / "results.md").read()
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [r["train/diverged"] for r in rows] == [0.0, 1.0, 0.0, 1.0]
    assert rows[1]["train/loss"] > 10 * rows[0]["train/loss"]
    # What was kept is the last accepted state (the initial one), with step 4's counter; only step 0's
    # and step 2's losses, both at the initial parameters, are remembered.
    saved = _saved_state(workdir, 4)
    assert int(saved["step"]) == 4 and int(saved["guard"]["count"]) == 2


def _scripted_steps(monkeypatch, outcome, interrupt_at=lambda call: False):
    """Replace the jitted step with one that runs the real step and then applies outcome(call, real
    new state, input state copy, metrics) -> (state, metrics); the input state is copied first because
    the real step donates it. interrupt_at(call) true: Ctrl-C arrives before that call's step runs."""
    real = parallel.jit_train_step

    def scripted(train_step, mesh, donate=True):
        compiled = real(train_step, mesh, donate)
        calls = {"n": 0}

        def step(state, batch):
            calls["n"] += 1
            if interrupt_at(calls["n"]):
                raise KeyboardInterrupt
            before = jax.tree.map(jnp.copy, state)
            new, metrics = compiled(state, batch)
            return outcome(calls["n"], new, before, metrics)

        return step

    monkeypatch.setattr(parallel, "jit_train_step", scripted)


@pytest.mark.slow  # about 30 s: a run; the default stage keeps its 15-minute budget
def test_nonfinite_updates_stop_the_run_with_the_last_good_state(data_root, tmp_path, monkeypatch):
    """From the 3rd step on every update is non-finite: the step keeps its input state and advances
    the counter and RNG (common.guard_and_report's contract); after max_consecutive_nonfinite=2 the
    loop stops, saves, and marks the results."""
    good = {}

    def outcome(call, new, before, metrics):
        if call < 3:
            good["params"] = jax.device_get(new.params)
            return new, metrics
        # What the guard reports for a non-finite step (tests/test_divergence.py checks the guard itself).
        return before.replace(step=new.step, rng=new.rng), {**metrics, "skipped": jnp.float32(1.0),
                                                            "nonfinite_streak": jnp.float32(call - 2)}

    _scripted_steps(monkeypatch, outcome)
    workdir = tmp_path / "run"
    with pytest.raises(train.TrainingStopped) as err:
        train.train_and_evaluate(_config(data_root, **{"train.max_consecutive_nonfinite": 2}), str(workdir))
    assert err.value.exit_code == train.EXIT_STOPPED
    assert str(err.value) == ("training stopped: 2 non-finite losses or gradients without an accepted update between "
                              f"them, at step 4; the last accepted state is saved as {workdir}/checkpoints/4")
    assert json.load(open(workdir / "results.json"))["status"] == "non_finite"
    saved = _saved_state(workdir, 4)
    assert int(saved["step"]) == 4
    _assert_same(good["params"], saved["params"])  # the parameters after step 2, the last good update


@pytest.mark.slow  # about 45 s; the default stage keeps its 15-minute budget
def test_model_selection_keeps_the_best_step_across_a_resume(data_root, tmp_path, monkeypatch):
    """Selection scores are scripted: step 2 → 0.6, step 4 → 0.6 (a tie during training keeps the
    earlier), then the run is interrupted; the resumed run's last state scores 0.5, so the reported
    state is step 2's, restored from best/ written by the first process."""
    scores = {2: 0.6, 4: 0.6, 6: 0.5}
    seen = []

    def scripted_evaluate(evaluator, variables, splits, *, all_protocols=False):
        step = int(scripted_evaluate.step)
        is_selection = splits is not scripted_evaluate.target
        seen.append((step, is_selection, splits, jax.device_get(variables["params"])))
        rank1 = scores[step] if is_selection else 0.25
        return {"rank1": rank1, "rank5": rank1, "rank10": rank1, "rank20": rank1, "mAP": rank1,
                "num_valid_queries": 2.0}

    real_prepare = builders.prepare_data

    def prepare(config, workdir):
        source, target, selection = real_prepare(config, workdir)
        scripted_evaluate.target = target
        return source, target, selection

    def outcome(call, new, before, metrics):
        scripted_evaluate.step = int(new.step)
        return new, metrics

    # Every evaluation, selection's and the final one's, goes through Evaluator.rank.
    monkeypatch.setattr(evaluation.Evaluator, "rank", lambda evaluator, variables, splits, *, all_protocols=False: (
        scripted_evaluate(evaluator, variables, splits, all_protocols=all_protocols), None))
    monkeypatch.setattr(builders, "prepare_data", prepare)
    _scripted_steps(monkeypatch, outcome, interrupt_at=lambda call: call == outcome.interrupt_at)
    config = _config(data_root, **{"train.num_epochs": 3, "train.checkpoint_every_epochs": 1,
                                   "train.eval_every_epochs": 1, "train.select_holdout_ids": 2,
                                   "train.keep_checkpoints": 5})
    workdir = tmp_path / "run"
    # Calls: steps 0, 1, the divergence guard's probe before evaluating step 2, steps 2, 3, the probe
    # before step 4's evaluation, then step 4 (the 7th call) is interrupted.
    outcome.interrupt_at = 7
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(config, str(workdir))
    assert [(s, sel) for s, sel, _, _ in seen] == [(2, True), (2, False), (4, True), (4, False)]
    # Selection sees held-out *source* identities: source frames, pids absent from the training split.
    source_root = os.path.join(str(data_root), "source")
    _, _, selection_split, _ = seen[0]
    held_out = {t.pid for t in selection_split.query}
    assert len(held_out) == 2 and all(t.frames[0].startswith(source_root) for t in selection_split.query)

    outcome.interrupt_at = None
    seen.clear()
    train.train_and_evaluate(config, str(workdir))
    assert [(s, sel) for s, sel, _, _ in seen] == [(6, True), (6, False)]
    reported = seen[-1][3]  # the final target evaluation's parameters
    _assert_same(_saved_state(workdir, 2)["params"], reported)
    assert BestCheckpoint(str(workdir / "best")).step == 2


def test_best_checkpoint_ties_and_reopening(tmp_path):
    state = {"w": jnp.arange(3.0)}
    best = BestCheckpoint(str(tmp_path / "best"))
    assert best.offer(2, state, 0.6) and not best.offer(4, {"w": jnp.zeros(3)}, 0.6)  # a tie keeps the earlier
    assert not best.offer(6, state, 0.5)
    assert best.offer(8, {"w": jnp.ones(3)}, 0.6, ties=True)  # the last state wins ties at the end
    best.close()
    reopened = BestCheckpoint(str(tmp_path / "best"))
    assert (reopened.step, reopened.rank1) == (8, 0.6)
    np.testing.assert_array_equal(np.asarray(reopened.restore(state)["w"]), np.ones(3))


# --- config changes on resume ---------------------------------------------------------------------


@pytest.mark.slow  # shares a micro run (about 40 s to make); the default stage keeps its 15-minute budget
def test_resume_with_a_changed_model_or_learning_rate_is_refused(straight, data_root):
    config = _config(data_root, **{"model.width": 16, "optimizer.learning_rate": 2e-3})
    with pytest.raises(ConfigError) as err:
        train.train_and_evaluate(config, str(straight))  # refused before anything is read or written
    assert str(err.value) == (
        f"{straight}/checkpoints/{LAST} was written by a run whose config differs in model.width (8 → 16), "
        "optimizer.learning_rate (0.001 → 0.002); resuming would continue that run with other settings. Use "
        "another --workdir, undo the change, or resume anyway with --config.train.allow_resume_changes=True")
    config.train.allow_resume_changes = True
    assert train.check_resume(config, "d", LAST, Checkpointer(str(straight / "checkpoints")).read_meta(LAST)) == [
        ("model.width", 8, 16), ("optimizer.learning_rate", 1e-3, 2e-3)]


@pytest.mark.slow  # shares a micro run (about 40 s to make); the default stage keeps its 15-minute budget
def test_resume_with_changes_that_cannot_matter_passes_and_reevaluates_once(straight, data_root, tmp_path):
    workdir = _copy_run(straight, tmp_path)
    # The run is complete: the rerun only evaluates again, and its rows replace the earlier ones.
    train.train_and_evaluate(_config(data_root, **{"train.log_every_steps": 5, "eval.max_rank": 20}), str(workdir))
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert sum("eval/rank1" in r for r in rows) == 1 and _train_rows(workdir) == list(range(1, LAST + 1))


# --- frames ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_frames(data_root, tmp_path_factory):
    """A copy of the data whose source training tracklets' first frames are damaged: the first one
    empty, the others cut in half. Returns (data root, [damaged paths])."""
    root = tmp_path_factory.mktemp("faults_bad_frames") / "data"
    shutil.copytree(data_root, root)
    source = datasets.load("svreid", str(root / "source"))
    damaged = [t.frames[0] for t in source.train]
    for i, path in enumerate(damaged):
        size = 0 if i == 0 else os.path.getsize(path) // 2
        with open(path, "r+b") as f:
            f.truncate(size)
    return root, damaged


def test_check_frames_lists_every_undecodable_frame(bad_frames, capsys):
    root, damaged = bad_frames
    code = check.main(["check", "--dataset=svreid", f"--root={root}/source", "--frames", "--workers=2"])
    out, err = capsys.readouterr()
    assert code == 1
    total = len({f for split in datasets.load("svreid", str(root / "source")) for t in split for f in t.frames})
    assert f"frames: decoded {total - len(damaged)} of {total}" in out
    errors = [line for line in err.splitlines() if line.startswith("error: cannot decode frame")]
    assert errors[0] == f"error: cannot decode frame {damaged[0]}: the file is empty (0 bytes)"
    assert [e.split(": ")[1].removeprefix("cannot decode frame ") for e in errors] == damaged
    assert err.strip().splitlines()[-1] == f"error: {len(damaged)} frame(s) cannot be decoded (listed above)"


def test_check_frames_reports_progress(bad_frames):
    root, damaged = bad_frames
    splits = datasets.load("svreid", str(root / "source"))
    err = io.StringIO()
    checked, problems = check.check_frames(splits, 2, err, report_every_sec=0, block=16)
    assert len(problems) == len(damaged)
    lines = err.getvalue().splitlines()
    assert lines and lines[0].startswith(f"frames: 16/{checked} (") and "frames/s, elapsed " in lines[0]
    assert "ETA " in lines[0]


def test_bad_frame_in_training_is_one_error_naming_the_file(bad_frames):
    root, damaged = bad_frames
    # Evenly spaced clips always include a tracklet's first frame: the first batch meets a damaged one.
    config = _config(root, **{"data.train_temporal": "evenly", "train.num_epochs": 1})
    with pytest.raises(FrameError) as err:
        train.train_and_evaluate(config, str(root.parent / "run_fail"))
    message = str(err.value)
    assert "\n" not in message and message.startswith("cannot decode frame ") and err.value.path in damaged


def test_bad_frames_skipped_on_request_are_counted(bad_frames, tmp_path):
    root, _ = bad_frames
    config = _config(root, **{"data.train_temporal": "evenly", "train.num_epochs": 1, "data.skip_bad_frames": True})
    train.train_and_evaluate(config, str(tmp_path / "run"))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl") if "train/loss" in line]
    # 8 source clips per step, each with its tracklet's damaged first frame exactly once.
    assert [r["train/bad_frames"] for r in rows] == [8.0, 8.0]


def test_png_and_jpeg_frames_are_read_and_other_files_named(data_root, tmp_path, capsys):
    root = tmp_path / "source"
    shutil.copytree(data_root / "source", root)
    before = datasets.load("svreid", str(root)).train[0]
    folder = os.path.dirname(before.frames[0])
    n = len(before)
    Image.open(before.frames[0]).save(os.path.join(folder, f"{n + 1}.png"))
    shutil.copy(before.frames[1], os.path.join(folder, f"{n + 2}.JPEG"))
    open(os.path.join(folder, "notes.txt"), "w").close()
    after = datasets.load("svreid", str(root)).train[0]
    assert after.frames == before.frames + (os.path.join(folder, f"{n + 1}.png"), os.path.join(folder, f"{n + 2}.JPEG"))
    # The PNG holds the pixels PIL decoded from the JPEG, so both decode to the same frame.
    np.testing.assert_array_equal(decode.load_frame(after.frames[n], 32, 16), decode.load_frame(before.frames[0], 32, 16))
    assert check.main(["check", "--dataset=svreid", f"--root={root}"]) == 0
    out = capsys.readouterr().out
    assert f"left out 1 file(s) in tracklet folders that are not .jpg/.jpeg/.png frames:\n  {folder}/notes.txt" in out


# --- config errors up front -----------------------------------------------------------------------


def test_unknown_field_and_bad_choice_are_one_line_before_any_data(tmp_path):
    base = [sys.executable, "-m", "svreid_jax.main", "--config=configs/demo.py:paper,micro",
            f"--workdir={tmp_path}/run"]
    done = child_processes.run(base + ["--config.foo=1"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                               timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "svreid_jax: config error: unknown config field 'foo' (--config.foo); the closest fields are "
        "data.source.root, data.target.root, data.source.options"]
    # A wrong choice is refused before the (missing) data is looked at.
    done = child_processes.run(base + ["--config.data.decoder=bogus", "--config.data.demo=False",
                                       f"--config.data.source.root={tmp_path}/nowhere"],
                               cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "svreid_jax: config error: config.data.decoder='bogus': expected one of auto, pil, simplejpeg")
    assert "nowhere" not in done.stderr and not os.path.exists(tmp_path / "run" / "metrics.jsonl")
