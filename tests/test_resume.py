"""Resume: a run interrupted mid-epoch and restarted ends bitwise equal to an uninterrupted run."""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import demo
from svreid_jax import parallel, train


def _config(data_root, variant="paper"):
    # The micro config's 2 steps per epoch: the learning-rate schedule is compiled into the step, so
    # this run shares its compiled step with the other micro runs of the suite (tests/conftest.py).
    config = demo.get_config(f"{variant},micro")
    config.train.num_epochs = 3
    config.train.checkpoint_every_epochs = 1
    config.data.demo_root = str(data_root)
    return config


def _final_state(workdir, step):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return restored["state"]


class _Interrupted(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("variant, interrupt_call, saved_step", [
    # Calls of the step: steps 0 and 1, the divergence guard's probe before the checkpoint at step 2,
    # steps 2 and 3 (the 5th call).
    # About 45 s (two runs): slow, so that the default stage keeps its 15-minute budget.
    pytest.param("paper", 5, 3, marks=pytest.mark.slow),
    # plus clusters the target before epochs 1 and 2: interrupted in the first step of epoch 1 (the 4th
    # call, after the probe), the run resumes at the epoch boundary and must recompute the same
    # pseudo-labels and memory.
    pytest.param("plus", 4, 2, marks=pytest.mark.slow),
])
def test_interrupted_mid_epoch_then_resumed_equals_uninterrupted(tmp_path, monkeypatch, variant, interrupt_call,
                                                                 saved_step):
    data_root = tmp_path / "data"
    train.train_and_evaluate(_config(data_root, variant), str(tmp_path / "straight"))

    # Ctrl-C arrives inside the 4th step (the 2nd of epoch 2): its batches were already drawn from
    # the iterators, so the saved data position must be the one *before* them.
    real_jit_train_step = parallel.jit_train_step

    def interrupting_jit(train_step, mesh, donate=True):
        compiled = real_jit_train_step(train_step, mesh, donate)
        calls = {"n": 0}

        def step(state, batch):
            calls["n"] += 1
            if calls["n"] == interrupt_call:
                raise _Interrupted()
            return compiled(state, batch)

        return step

    monkeypatch.setattr(parallel, "jit_train_step", interrupting_jit)
    try:
        train.train_and_evaluate(_config(data_root, variant), str(tmp_path / "resumed"))
    except _Interrupted:
        pass
    else:
        raise AssertionError("the run was not interrupted")
    monkeypatch.setattr(parallel, "jit_train_step", real_jit_train_step)
    saved = ocp.CheckpointManager(os.path.join(tmp_path / "resumed", "checkpoints"))
    assert saved.latest_step() == saved_step  # the interrupt saved the last finished step
    saved.close()
    train.train_and_evaluate(_config(data_root, variant), str(tmp_path / "resumed"))

    straight = _final_state(tmp_path / "straight", 6)
    resumed = _final_state(tmp_path / "resumed", 6)
    assert int(resumed["step"]) == 6
    flat_straight = jax.tree_util.tree_flatten_with_path(straight)[0]
    flat_resumed = dict(jax.tree_util.tree_flatten_with_path(resumed)[0])
    assert len(flat_straight) == len(flat_resumed)
    for path, value in flat_straight:
        np.testing.assert_array_equal(np.asarray(flat_resumed[path]), np.asarray(value),
                                      err_msg=jax.tree_util.keystr(path))
