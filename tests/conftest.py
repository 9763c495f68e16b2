"""Shared test setup: CPU only, repo root importable (configs/), absl flags marked parsed (grain reads them),
one XLA compilation cache for the whole session."""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Most end-to-end tests train the same micro config, and compiling its init and step is most of each
# run (a 6-step micro run: 66 s cold, 13 s with the cache warm, 2 cores). A fresh cache per session
# keeps runs independent of each other; the variables are set before jax is imported so that the
# subprocesses the tests start (the command line, notebooks' kernels) share it. Executables loaded
# from the cache are the ones compiled, so bitwise comparisons are unaffected.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="svreid_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The command-line runs the tests start compile what the in-process runs compile (see below).
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")

import jax  # noqa: E402
from absl import flags  # noqa: E402
import pytest  # noqa: E402

# Compiling init and train steps is ~2× faster on CPU with the non-partitionable threefry
# (measured: tiny ReIDNet init 6.7 s → 2.6 s, step 11.5 s → 7.6 s). Tests only; it changes which
# random numbers are drawn, not their distribution.
jax.config.update("jax_threefry_partitionable", False)

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """One micro training run (configs/demo.py:paper,micro, 1 epoch of 2 steps) through the command line,
    shared by the tests of the modes that read a trained workdir (test_modes, evaluation/test_embedder)."""
    path = tmp_path_factory.mktemp("micro") / "run"
    cmd = [sys.executable, "-m", "svreid_jax.main", "--config=configs/demo.py:paper,micro", f"--workdir={path}",
           "--config.train.num_epochs=1"]
    done = subprocess.run(cmd, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return path
