"""Data parallelism: one device, jit-sharded and pmapped over 4 fake CPU devices give the same update;
pmap without sync BN matches a hand-made per-device-BN reference; helpers reject bad input."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from configs import default
from svreid_jax import parallel, variants
from svreid_jax.models import reid

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def script_output():
    done = subprocess.run([sys.executable, os.path.join(HERE, "parallel_script.py")], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _values(pattern, text):
    match = re.search(pattern, text)
    assert match, text
    return [float(g) for g in match.groups()]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_parallel_step_matches_single_device(script_output, mode):
    assert "devices=4" in script_output
    diffs = _values(rf"{mode}: param_diff=(\S+) stats_diff=(\S+) teacher_stats_diff=(\S+) loss_diff=(\S+) "
                    r"grad_norm_rel=(\S+)", script_output)
    # Global BN statistics, global-batch losses and global-mean gradients (SGD, so the parameter
    # change is the gradient itself and a scale error would show): equal up to float reassociation.
    assert max(diffs) < 1e-5, dict(zip(["param", "stats", "teacher_stats", "loss", "grad_norm"], diffs))


@pytest.mark.slow
def test_pmap_replicas_stay_identical(script_output):
    assert _values(r"pmap_replica_spread=(\S+)", script_output)[0] == 0.0


@pytest.mark.slow
def test_pmap_without_sync_bn_is_per_device_bn(script_output):
    ref_param, ref_stats, global_param, spread = _values(
        r"nosync: ref_param_diff=(\S+) ref_stats_diff=(\S+) global_param_diff=(\S+) replica_spread=(\S+)",
        script_output)
    assert ref_param < 1e-5 and ref_stats < 1e-5  # the per-device reference, statistics averaged
    assert global_param > 100 * max(ref_param, 1e-7)  # and clearly not the global-BN update
    assert spread == 0.0  # the averaged running statistics keep the replicas identical


def test_split_for_devices_layout_and_error():
    batch = {"source": {"video": np.arange(8 * 3).reshape(8, 3), "pid": np.arange(8)}}
    split = parallel.split_for_devices(batch, 4)
    assert split["source"]["video"].shape == (4, 2, 3)
    np.testing.assert_array_equal(split["source"]["pid"][1], [2, 3])  # device 1: the 2nd contiguous slice
    with pytest.raises(ValueError, match=r"batch\['source'\]\['pid'\] has leading size 6.*divisible by the 4 devices"):
        parallel.split_for_devices({"source": {"pid": np.arange(6)}}, 4)


def test_parallelize_rejects_unknown_mode():
    config = default.get_config()
    config.parallel.mode = "pjit"
    with pytest.raises(ValueError, match=r"parallel.mode='pjit'; expected 'jit' or 'pmap'"):
        parallel.parallelize(variants.make_train_step, None, config, parallel.data_mesh())


def test_parallel_model_sets_bn_axis_only_for_pmap_sync_bn():
    config = default.get_config()
    model = reid.ReIDNet(num_classes=2, backbone={"depth": "tiny"})
    assert parallel.parallel_model(model, config, None) is model
    assert parallel.parallel_model(model, config, "batch").bn_axis_name == "batch"
    config.parallel.sync_bn = False
    assert parallel.parallel_model(model, config, "batch") is model
