"""CI runs every test: the default stage runs the suite without the tests marked `slow`; the second
stage installs the torch extra and runs the tests marked `slow` or `torch`. Every test that needs torch
carries the `torch` marker, no test hides behind an environment switch, and the README shows .ci/run's
commands verbatim.

Found statically (ast), so adding a torch test without its marker fails here.
"""
import ast
import configparser
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CI_RUN = ROOT / ".ci" / "run"


def _stages():
    """{stage name: command, as bash runs it} from the `stage <name> "<command>"` lines of .ci/run."""
    found = re.findall(r'^stage (\w+) "((?:[^"\\]|\\.)*)"$', CI_RUN.read_text(encoding="utf-8"), flags=re.M)
    return {name: command.replace('\\"', '"') for name, command in found}


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
                      "second": "pip install -c constraints.txt -e '.[test,torch]' && pytest -q -m \"slow or torch\""}


def test_the_default_suite_leaves_out_only_the_slow_tests():
    ini = configparser.ConfigParser()
    ini.read(ROOT / "pytest.ini")
    assert shlex.split(ini["pytest"]["addopts"]) == ["-m", "not slow"]
    markers = {line.split(":")[0].strip() for line in ini["pytest"]["markers"].strip().splitlines()}
    assert markers == {"slow", "torch"}


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


def _readme_command_lines():
    """README's lines as one would type them: without indentation, a leading `$ ` prompt or a trailing
    `  # comment`, so that the check is on the command, not on how the README lays it out."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    return {re.sub(r"\s+#\s.*$", "", re.sub(r"^\$\s+", "", line.strip())) for line in lines}


def test_readme_shows_the_ci_commands_verbatim():
    lines = _readme_command_lines()
    for name, command in _stages().items():
        assert command in lines, f"README lacks the {name} stage's command on a line of its own: {command}"
