"""CI runs every test: the default stage runs the suite without the tests marked `slow` or `torch`; the
second stage installs the CPU torch wheel and the torch extra and runs the tests marked `slow` or `torch`.
Every test that needs torch carries the `torch` marker, selecting one where torch does not import stops
the run, no test hides behind an environment switch, each stage runs under a time limit within CI's
budget, and the README and docs/DEVELOPING.md show .ci/run's commands verbatim.

Found statically (ast), so adding a torch test without its marker fails here.
"""
import ast
import configparser
import os
import re
import shlex
import sys
from pathlib import Path

import child_processes

ROOT = Path(__file__).resolve().parent.parent
CI_RUN = ROOT / ".ci" / "run"
DEFAULT_STAGE_BUDGET_MIN = 15  # the default stage's tests on 2 CPU cores
CI_BUDGET_MIN = 90  # both stages, installs included


def _stage_lines():
    """(name, the tests' limit in minutes, command as bash runs it) of the `stage <name> <N>m "<command>"`
    lines of .ci/run."""
    found = re.findall(r'^stage (\w+) (\d+)m "((?:[^"\\]|\\.)*)"$', CI_RUN.read_text(encoding="utf-8"),
                       flags=re.M)
    return [(name, int(limit), command.replace('\\"', '"')) for name, limit, command in found]


def _stages():
    """{stage name: command, as bash runs it}."""
    return {name: command for name, _, command in _stage_lines()}


def _tests():
    """(path::name, decorator text, function text, module-level text) of every test function."""
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        rel = path.relative_to(ROOT).as_posix()
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        module_text = "\n".join(ast.get_source_segment(source, n) or "" for n in tree.body
                                if not isinstance(n, (ast.FunctionDef, ast.ClassDef)))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                decorators = " ".join(ast.get_source_segment(source, d) or "" for d in node.decorator_list)
                yield f"{rel}::{node.name}", decorators, ast.get_source_segment(source, node) or "", module_text


def _marked(decorators, module_text, marker):
    return f"pytest.mark.{marker}" in decorators or re.search(rf"^pytestmark = .*pytest\.mark\.{marker}\b",
                                                                module_text, re.M) is not None


def test_the_two_stages_are_there():
    stages = _stages()
    assert stages == {"default": "pip install -c constraints.txt -e '.[test]' && pytest -q",
                      "second": "pip install -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu "
                                "torch && pip install -c constraints.txt -e '.[test,torch]' "
                                "&& pytest -q -m \"slow or torch\""}


def test_each_stage_runs_under_a_limit_within_the_budget():
    text = CI_RUN.read_text(encoding="utf-8")
    install = re.search(r"^INSTALL_LIMIT=(\d+)m\b", text, re.M)
    assert install, "no INSTALL_LIMIT=<N>m in .ci/run"
    limits = {name: minutes for name, minutes, _ in _stage_lines()}
    assert 0 < limits["default"] <= DEFAULT_STAGE_BUDGET_MIN
    assert sum(limits.values()) + len(limits) * int(install.group(1)) <= CI_BUDGET_MIN, (limits, install.group(0))
    # Both parts of a stage go through `timed`, which runs its command under `timeout`.
    stage = re.search(r"^stage\(\) \{.*?^\}", text, re.M | re.S).group(0)
    assert re.search(r'^\s*timed "stage \$1 install" "\$INSTALL_LIMIT" ".*\$install"$', stage, re.M), stage
    assert re.search(r'^\s*timed "stage \$1 tests" "\$2" "\$tests"$', stage, re.M), stage


def _ci_function(name, call):
    """Run one of .ci/run's shell functions on its own: (exit status, stdout)."""
    text = CI_RUN.read_text(encoding="utf-8")
    body = re.search(rf"^{name}\(\) \{{.*?^\}}", text, re.M | re.S).group(0)
    done = child_processes.run(["bash", "-c", f"{body}\n{call}"], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout


def test_the_stage_timer_prints_the_wall_time_and_stops_at_the_limit():
    assert _ci_function("timed", 'timed "stage x tests" 1s "sleep 30"') == (
        124, "== CI stage x tests: 0 min 01 s (limit 1s), stopped at the limit\n")
    assert _ci_function("timed", 'timed "stage x tests" 1m "echo ran; exit 3"') == (
        3, "ran\n== CI stage x tests: 0 min 00 s (limit 1m)\n")


def test_the_default_suite_leaves_out_the_slow_and_the_torch_tests_and_lists_the_slowest():
    ini = configparser.ConfigParser()
    ini.read(ROOT / "pytest.ini")
    assert shlex.split(ini["pytest"]["addopts"]) == ["-m", "not slow and not torch", "--durations=25"]
    markers = {line.split(":")[0].strip() for line in ini["pytest"]["markers"].strip().splitlines()}
    assert markers == {"slow", "torch"}


def test_selecting_torch_tests_where_torch_does_not_import_stops_at_collection(tmp_path):
    # A `torch` package that cannot be imported, ahead of the real one on the path.
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'torch\' (hidden by tests/test_ci.py)", name="torch")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    # One module skips itself at import (no items), the other has one marked test among others.
    files = ["tests/models/test_torch_parity.py", "tests/interop/test_hub.py"]

    def collect(*marks):
        return child_processes.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
                                    *marks, *files], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    done = collect("-m", "slow or torch")
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("ERROR: ")]
    assert done.returncode == 4, done.stdout[-3000:] + done.stderr[-3000:]  # pytest's usage error
    assert errors == ["ERROR: the selected tests marked torch (2 tests or modules, first "
                      "tests/interop/test_hub.py::test_torch_written_safetensors_match_torch_forward) need torch, "
                      "which does not import (ModuleNotFoundError: No module named 'torch' (hidden by "
                      "tests/test_ci.py)); install the torch extra (README, 'Install and run the tests') or "
                      "deselect them with -m 'not torch'"], done.stdout[-3000:] + done.stderr[-3000:]
    done = collect()  # the default selection leaves them out: nothing needs torch
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "deselected" in done.stdout and "test_torch_written_safetensors" not in done.stdout


def test_every_torch_test_is_marked_and_none_skips_on_an_environment_switch():
    tests = list(_tests())
    # Spelled in two parts so that this test does not match itself.
    needs_torch = ("importorskip(" + '"torch"', "find_spec(" + '"torch")')
    torch_tests = {name for name, deco, text, module in tests
                   if any(n in text or n in module or n in deco for n in needs_torch)}
    # The scan must see the known ones (it could otherwise pass by finding nothing).
    assert {"tests/interop/test_hub.py::test_torch_written_safetensors_match_torch_forward",
            "tests/test_reference_end_to_end.py::test_eval_mode_converts_an_authors_checkpoint"} <= torch_tests
    assert any(n.startswith("tests/models/test_torch_parity.py::") for n in torch_tests)
    assert "tests/test_gpu_benchmark.py::test_dry_run_step_part_runs_pytorch_beside_jax" in torch_tests
    unmarked = sorted(n for n, deco, text, module in tests if n in torch_tests and not _marked(deco, module, "torch"))
    assert not unmarked, f"tests that need torch without @pytest.mark.torch (CI's second stage would skip them): {unmarked}"
    switched = sorted(n for n, deco, text, module in tests if "os.environ" in deco)
    assert not switched, f"tests that skip on an environment switch CI never sets (mark them slow instead): {switched}"
    slow = {n for n, deco, text, module in tests if _marked(deco, module, "slow")}
    assert "tests/test_modes.py::test_splits_mode_trains_ten_models_and_aggregates" in slow


def _readme_command_lines(doc="README.md"):
    """A document's lines as one would type them: without indentation, a leading `$ ` prompt or a trailing
    `  # comment`, so that the check is on the command, not on how the document lays it out."""
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    return {re.sub(r"\s+#\s.*$", "", re.sub(r"^\$\s+", "", line.strip())) for line in lines}


def test_readme_and_developing_show_the_ci_commands_verbatim():
    for doc in ("README.md", "docs/DEVELOPING.md"):
        lines = _readme_command_lines(doc)
        for name, command in _stages().items():
            assert command in lines, f"{doc} lacks the {name} stage's command on a line of its own: {command}"
