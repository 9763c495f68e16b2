"""Shared test setup: the environment the tests run in (set here, whatever the outer one says), the repo
root importable (configs/), absl flags marked parsed (grain reads them), one XLA compilation cache for the
whole session, no torch test passing by skipping, and no child process outliving its test."""
import atexit
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The tests test one environment. Every JAX_*, XLA_* and HF_* variable from outside is dropped (an outer
# XLA_FLAGS could give the in-process tests 8 devices, JAX_ENABLE_X64 other dtypes, HF_HUB_OFFLINE or
# HF_ENDPOINT another hub) and the ones the suite relies on are assigned. They are set before jax is
# imported, so that the subprocesses the tests start (the command line, notebooks' kernels) inherit them.
for _name in [n for n in os.environ if n.startswith(("JAX_", "XLA_", "HF_"))]:
    del os.environ[_name]
_session = tempfile.mkdtemp(prefix="svreid_jax_test_session_")
atexit.register(shutil.rmtree, _session, ignore_errors=True)
os.environ.update({
    "JAX_PLATFORMS": "cpu",
    # Most end-to-end tests train the same micro config, and compiling its init and step is most of each
    # run (a 6-step micro run: 66 s cold, 13 s with the cache warm, 2 cores). A fresh cache per session
    # keeps runs independent of each other. Executables loaded from the cache are the ones compiled, so
    # bitwise comparisons are unaffected.
    "JAX_COMPILATION_CACHE_DIR": os.path.join(_session, "xla_cache"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    # The non-partitionable threefry compiles init and train steps ~2× faster on CPU (tiny ReIDNet init
    # 6.7 s → 2.6 s, step 11.5 s → 7.6 s); it changes which random numbers are drawn, not their
    # distribution. Users run jax's default (partitionable): tests/test_threefry_default.py covers it.
    "JAX_THREEFRY_PARTITIONABLE": "0",
    # Hub tests serve their files from a local server (tests/interop/test_hub.py) and name the cache
    # they use; a default cache, if any test reaches one, is this session's.
    "HF_HUB_OFFLINE": "0",
    "HF_HOME": os.path.join(_session, "huggingface"),
})

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

import child_processes  # noqa: E402

jax.config.update("jax_threefry_partitionable", False)  # the environment's value, whoever imported jax first

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@pytest.fixture(autouse=True)
def _no_child_process_outlives_its_test():
    """Tests start processes through tests/child_processes.py; what is still running at the end is killed."""
    yield
    child_processes.kill_all()


# --- torch tests never pass by skipping ---------------------------------------------------------------
# Where torch does not import, a torch test module that skips itself at import (pytest.importorskip at
# module level) yields no test at all, so selected torch tests are found two ways: collected items with
# the marker, and modules skipped at collection that declare the marker for all their tests.

_torch_modules_skipped = []


def pytest_collectreport(report):
    path = ROOT / report.nodeid
    if report.skipped and report.nodeid.endswith(".py") and path.is_file():
        if re.search(r"^pytestmark = .*pytest\.mark\.torch\b", path.read_text(encoding="utf-8"), re.M):
            _torch_modules_skipped.append(report.nodeid)


def _selects_torch_tests(config) -> bool:
    """Whether the -m expression selects a test marked torch (and nothing else)."""
    from _pytest.mark.expression import Expression  # pytest's own parser of -m, so that it reads it as -m does

    markexpr = config.getoption("markexpr")
    return not markexpr or Expression.compile(markexpr).evaluate(lambda name, **kwargs: name == "torch")


def _torch_import_error():
    try:
        import torch  # noqa: F401
    except Exception as err:  # noqa: BLE001 — ImportError, or a broken install's OSError
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config, items):
    selected = [item.nodeid for item in items if item.get_closest_marker("torch")]
    if _selects_torch_tests(config):
        selected += _torch_modules_skipped
    if selected:
        error = _torch_import_error()
        if error is not None:
            raise pytest.UsageError(
                f"the selected tests marked torch ({len(selected)} tests or modules, first {selected[0]}) need "
                f"torch, which does not import ({error}); install the torch extra (README, 'Install and run the "
                "tests') or deselect them with -m 'not torch'")


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """One micro training run (configs/demo.py:paper,micro, 1 epoch of 2 steps) through the command line,
    shared by the tests of the modes that read a trained workdir (test_modes, evaluation/test_embedder)."""
    path = tmp_path_factory.mktemp("micro") / "run"
    cmd = [sys.executable, "-m", "svreid_jax.main", "--config=configs/demo.py:paper,micro", f"--workdir={path}",
           "--config.train.num_epochs=1"]
    done = child_processes.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return path
