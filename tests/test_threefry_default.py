"""The random-number setting users run: jax's default, the partitionable threefry. The rest of the suite
runs the non-partitionable one (tests/conftest.py: it compiles about twice as fast); here a micro run
through the command line, and the same run stopped by SIGTERM and resumed, run under the default and
end bitwise equal.
"""
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import child_processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAST = 6  # 3 epochs × 2 steps, a checkpoint after each epoch


def _default_env():
    """The suite's environment without its threefry setting: jax's own default applies."""
    return {k: v for k, v in os.environ.items() if k != "JAX_THREEFRY_PARTITIONABLE"}


def _cli(workdir, data_root):
    return [sys.executable, "-m", "svreid_jax.main", "--config=configs/demo.py:paper,micro", f"--workdir={workdir}",
            f"--config.data.demo_root={data_root}", "--config.train.num_epochs=3"]


def _final_state(workdir):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    try:
        assert manager.latest_step() == LAST
        return manager.restore(LAST, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    finally:
        manager.close()


@pytest.mark.slow  # three micro runs compiled under the slower-to-compile default
def test_micro_run_and_resume_under_the_default_threefry(tmp_path):
    probe = child_processes.run([sys.executable, "-c", "import jax; print(jax.config.jax_threefry_partitionable)"],
                                env=_default_env(), capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == "True", probe.stderr[-2000:]  # what users get, and what this test runs

    data_root, straight, resumed = tmp_path / "data", tmp_path / "straight", tmp_path / "resumed"
    done = child_processes.run(_cli(straight, data_root), cwd=ROOT, env=_default_env(), capture_output=True,
                               text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    # The same run, stopped by SIGTERM once step 3 is logged, then the same command again.
    proc = child_processes.popen(_cli(resumed, data_root), cwd=ROOT, env=_default_env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "step 3/" in line:
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, "".join(seen)[-2000:] + err[-3000:]
    assert "run the same command to resume" in err.strip().splitlines()[-1], err[-3000:]
    done = child_processes.run(_cli(resumed, data_root), cwd=ROOT, env=_default_env(), capture_output=True,
                               text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    a, b = _final_state(straight), _final_state(resumed)
    assert int(b["step"]) == LAST
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    assert len(flat_a) == len(flat_b) > 0
    for path, value in flat_a:
        np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_b[path]), err_msg=jax.tree_util.keystr(path))
