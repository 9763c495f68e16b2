"""Data parallelism: one device and jit-sharded over 4 fake CPU devices give the same update."""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_jit_sharded_step_matches_single_device():
    done = subprocess.run([sys.executable, os.path.join(HERE, "parallel_script.py")], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    match = re.search(r"devices=(\d+) param_diff=(\S+) stats_diff=(\S+)", done.stdout)
    assert match, done.stdout
    assert int(match.group(1)) == 4
    # Global BatchNorm statistics and global-mean gradients: the same update up to float reassociation.
    assert float(match.group(2)) < 1e-5
    assert float(match.group(3)) < 1e-5
