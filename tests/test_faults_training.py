"""Training faults injected into micro demo runs (configs/demo.py:paper,micro, 2 steps per epoch) and
what the loop must do about each: an exploding learning rate (the update that caused the explosion
rolled back, the results marked, exit 3), a kill during a slow epoch hook (the checkpoint from before
the hook on disk), a signal during the final save and evaluation (the save completes), a failed save
(no partial folder left), and model selection without usable held-out identities (a warning, recorded).
"""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from svreid_jax import builders, parallel, train
from svreid_jax.data import demo as demo_data
from svreid_jax.data.records import DatasetSplits, Tracklet
from svreid_jax.utils.checkpointing import CheckpointError, Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("training_faults_data")
    demo_data.ensure(str(root), **demo.get_config("paper,micro").data.demo_options.to_dict())
    return root


def _config(data_root, **fields):
    config = demo.get_config("paper,micro")
    config.data.demo_root = str(data_root)
    config.train.checkpoint_every_epochs = 5
    for path, value in fields.items():
        section, leaf = path.split(".")
        config[section][leaf] = value
    return config


def _partial_saves(directory):
    return [n for n in os.listdir(directory) if ".orbax-checkpoint-tmp" in n]


def _assert_same(a, b):
    for (path, x), (_, y) in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


# --- divergence: the exploding update is rolled back, the run marked --------------------------------


def test_exploding_learning_rate_rolls_back_marks_results_and_exits_3(data_root, tmp_path, monkeypatch):
    """lr=1e6 on 3 epochs × 2 steps (the issue's case): update 0 (warm-up lr 5.5e5) wrecks the weights.
    Step 1's loss, at those weights, rejects it and the guard restores the initial state; so does every
    second step after it. The run finishes from the initial parameters, marked, with exit status 3."""
    real = parallel.jit_train_step
    first_input = {}

    def recording(train_step, mesh, donate=True):
        compiled = real(train_step, mesh, donate)

        def step(state, batch):
            if not first_input:
                first_input["params"] = jax.device_get(jax.tree.map(jnp.copy, state.params))
            return compiled(state, batch)

        return step

    monkeypatch.setattr(parallel, "jit_train_step", recording)
    workdir = tmp_path / "run"
    with pytest.raises(train.TrainingStopped) as err:
        train.train_and_evaluate(_config(data_root, **{"optimizer.learning_rate": 1e6, "train.num_epochs": 3}),
                                 str(workdir))
    assert err.value.exit_code == train.EXIT_STOPPED == 3
    assert str(err.value).startswith("training finished, but the final state follows 3 rejected step(s) with no "
                                     "accepted update after them (diverged: ")
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl") if "train/loss" in line]
    assert [r["train/diverged"] for r in rows] == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert [r["train/rolled_back"] for r in rows] == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert rows[1]["train/loss"] > 1e6 * rows[0]["train/loss"]  # the explosion is real
    # The final state, saved and evaluated, is the last accepted one: the initial parameters.
    saved = Checkpointer(str(workdir / "checkpoints")).restore_saved(6)[2]
    _assert_same(first_input["params"], saved["params"])
    results = json.load(open(workdir / "results.json"))
    assert results["status"] == "diverged" and results["diverged"] == 3 and results["skipped"] == 0
    assert 0.0 <= results["rank1"] <= 1.0 and results["message"] in open(workdir / "results.md").read()


# --- checkpoints around a slow epoch hook and the final evaluation ---------------------------------

_DRIVER = textwrap.dedent("""
    import os, runpy, sys, time
    from svreid_jax import variants
    from svreid_jax.evaluation import evaluate
    from svreid_jax.utils import checkpointing
    from svreid_jax.variants import paper, terms

    def slow_hook(config, state, extract, camids, epoch):
        # Stands for plus's whole-set clustering: minutes of compiled code a signal cannot stop.
        if epoch == 2:
            sys.stderr.write("slow hook started\\n"); sys.stderr.flush()
            time.sleep(300)
        return state, {}

    variants.register("slow_hook", variants.Variant(paper.make_train_step, uses_target=terms.uses_target,
                                                    epoch_start=slow_hook))
    if os.environ.get("SLOW_FINAL"):
        real_save, real_rank = checkpointing.Checkpointer.save, evaluate.Evaluator.rank

        def slow_save(self, step, *args, **kwargs):
            if step == int(os.environ["SLOW_FINAL"]):
                sys.stderr.write("final save started\\n"); sys.stderr.flush()
                time.sleep(4)  # a slow disk: longer than the grace period
            return real_save(self, step, *args, **kwargs)

        def slow_evaluation(self, *args, **kwargs):
            time.sleep(4)
            return real_rank(self, *args, **kwargs)

        checkpointing.Checkpointer.save, evaluate.Evaluator.rank = slow_save, slow_evaluation
    sys.argv = ["svreid_jax.main"] + sys.argv[1:]
    runpy.run_module("svreid_jax.main", run_name="__main__")
""")


def _start(tmp_path, data_root, workdir, *extra, env=None):
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    cmd = [sys.executable, str(driver), "--config=configs/demo.py:paper,micro", f"--workdir={workdir}",
           f"--config.data.demo_root={data_root}", "--config.train.checkpoint_every_epochs=5",
           "--config.train.stop_grace_sec=1", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **(env or {})),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(proc, text):
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            return seen
    proc.wait(timeout=60)
    raise AssertionError(f"{text!r} never appeared (exit {proc.returncode}):\n{''.join(seen[-30:])}")


@pytest.mark.slow  # two command-line runs
def test_kill_during_a_slow_epoch_hook_keeps_the_checkpoint_from_before_it(data_root, tmp_path):
    workdir = tmp_path / "run"
    proc = _start(tmp_path, data_root, workdir, "--config.variant=slow_hook", "--config.train.num_epochs=4")
    try:
        _wait_for(proc, "slow hook started")
        proc.send_signal(signal.SIGTERM)  # the hook does not notice; the scheduler kills after its grace
        time.sleep(3)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    # The checkpoint written before epoch 2's hook (step 4; the cadence alone would save at 10) is complete.
    checkpoints = workdir / "checkpoints"
    step, meta, state = Checkpointer(str(checkpoints)).restore_saved()
    assert step == 4 and meta["epoch"] == 2 and int(state["step"]) == 4
    assert _partial_saves(checkpoints) == []


@pytest.mark.slow
def test_signal_during_the_final_save_and_evaluation_waits_for_the_save(data_root, tmp_path):
    workdir = tmp_path / "run"
    proc = _start(tmp_path, data_root, workdir, "--config.train.num_epochs=2", env={"SLOW_FINAL": "4"})
    try:
        _wait_for(proc, "final save started")
        proc.send_signal(signal.SIGTERM)  # the 1 s grace runs out during the save, then the evaluation
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("svreid_jax: stopped by SIGTERM outside the training steps")
    step, _, state = Checkpointer(str(workdir / "checkpoints")).restore_saved()
    assert step == 4 and int(state["step"]) == 4
    assert _partial_saves(workdir / "checkpoints") == [] and not (workdir / "results.json").exists()


def test_a_failed_save_leaves_no_partial_folder_and_old_ones_are_removed(tmp_path):
    import resource

    directory = tmp_path / "checkpoints"
    leftover = directory / "7.orbax-checkpoint-tmp-1234" / "state"
    leftover.mkdir(parents=True)
    checkpointer = Checkpointer(str(directory), asynchronous=False)
    checkpointer.save(1, {"w": np.zeros(4, np.float32)}, {}, {"step": 1})
    assert _partial_saves(directory) == [] and checkpointer.steps() == [1]  # a killed run's leftover is gone
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))  # a full disk for files over 100 kB (the array: 800 kB of noise, which does not compress)
    try:
        with pytest.raises(CheckpointError, match="could not write checkpoint step 2 .*File too large"):
            checkpointer.save(2, {"w": np.random.default_rng(0).random(200_000, np.float32)}, {}, {"step": 2})
            checkpointer.wait()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert _partial_saves(directory) == [] and sorted(os.listdir(directory)) == ["1"]
    checkpointer.close()


# --- model selection needs identities seen in two cameras ------------------------------------------


def _splits(cameras_per_pid):
    train = tuple(Tracklet(frames=(f"/x/{pid}_{i}.jpg",), pid=pid, camid=cam)
                  for pid, cams in enumerate(cameras_per_pid) for i, cam in enumerate(cams))
    return DatasetSplits(train, (), ())


def test_selection_holds_out_only_identities_seen_in_two_cameras(caplog):
    # pids 0, 1, 3 have one camera (1 has two tracklets in it); 2 and 4 have two.
    splits = _splits([[0], [1, 1], [0, 1, 1], [2], [1, 0]])
    source, selection = builders.hold_out_source(splits, 3, seed=0)
    held = {t.pid for t in selection.query}
    assert held == {2, 4} and {t.pid for t in selection.gallery} == {2, 4}
    assert {t.camid for t in selection.query if t.pid == 2} == {0}  # its first tracklet; gallery has camera 1
    assert source.num_train_pids == 3 and {t.pid for t in source.train} == {0, 1, 2}  # relabelled
    assert [r.getMessage() for r in caplog.records] == [
        "model selection holds out 2 source identities, not train.select_holdout_ids=3: only they have tracklets "
        "in two cameras"]

    caplog.clear()
    unchanged, none = builders.hold_out_source(_splits([[0], [1, 1], [0], [2, 2, 2]]), 2, seed=0)
    assert none is None and unchanged.train == _splits([[0], [1, 1], [0], [2, 2, 2]]).train
    assert [r.getMessage() for r in caplog.records] == [
        "model selection is off: train.select_holdout_ids=2, but none of the 4 source identities has tracklets "
        "in two cameras to hold out; the last state is reported"]


@pytest.mark.slow  # about 10 s: a run; the default stage keeps its 15-minute budget
def test_training_with_selection_off_reports_the_last_state_and_says_so(data_root, tmp_path, monkeypatch):
    real = builders.load_datasets

    def one_camera_source(config, workdir):
        source, target = real(config, workdir)
        one_camera = tuple(dataclasses.replace(t, camid=0) for t in source.train)
        return DatasetSplits(one_camera, source.query, source.gallery), target

    monkeypatch.setattr(builders, "load_datasets", one_camera_source)
    workdir = tmp_path / "run"
    results = train.train_and_evaluate(_config(data_root, **{"train.num_epochs": 1, "train.select_holdout_ids": 2}),
                                       str(workdir))
    assert results["model_selection"].startswith("off: no source identity has tracklets in two cameras")
    assert json.load(open(workdir / "results.json")) == results
    assert not (workdir / "best").exists() and results["skipped"] == 0 and results["diverged"] == 0
