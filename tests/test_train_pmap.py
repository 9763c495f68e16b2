"""train_and_evaluate with parallel.mode='pmap' end to end (on the test process's one CPU device), and
its checkpoint resumed by a jit run: a checkpoint does not depend on the mode that wrote it."""
import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import demo
from svreid_jax import builders, train


@pytest.mark.slow  # a pmap run and a jit run, each with its own compiles (about a minute on CPU)
def test_pmap_run_checkpoints_in_the_jit_format(tmp_path):
    workdir = str(tmp_path / "run")
    config = demo.get_config("source_only,micro")
    config.data.demo_root = str(tmp_path / "data")
    config.parallel.mode = "pmap"
    config.train.num_epochs = 1
    final = train.train_and_evaluate(config, workdir)
    assert 0.0 <= final["rank1"] <= 1.0

    # The saved state has no device axis: the same leaf shapes as a freshly built jit state.
    with ocp.CheckpointManager(f"{workdir}/checkpoints") as manager:
        saved = manager.restore(None, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    model = builders.create_model(config, num_classes=builders.prepare_data(config, workdir)[0].num_train_pids)
    params, _ = builders.init_variables(config, model, jax.random.PRNGKey(0))
    assert jax.tree.map(np.shape, saved["params"]) == jax.tree.map(np.shape, params)
    assert int(saved["step"]) == 2

    config.parallel.mode = "jit"
    config.train.num_epochs = 2
    train.train_and_evaluate(config, workdir)
    steps_logged = [json.loads(line)["step"] for line in open(f"{workdir}/metrics.jsonl") if "train/loss" in line]
    assert steps_logged == [1, 2, 3, 4]  # the jit run went on from the pmap run's step 2
