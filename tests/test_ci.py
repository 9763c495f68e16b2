"""CI runs every test: each test that skips without torch or without an environment switch is named in
the torch stage of .ci/run, every name there exists, and the README shows .ci/run's commands verbatim.

Found statically (ast), so adding a torch or slow test without adding it to CI fails here.
"""
import ast
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CI_RUN = ROOT / ".ci" / "run"


def _stages():
    """{stage name: command} from the `stage <name> "<command>"` lines of .ci/run."""
    return dict(re.findall(r'^stage (\w+) "(.*)"$', CI_RUN.read_text(encoding="utf-8"), flags=re.M))


def _pytest_targets(command):
    """The test files and node ids the pytest call of a stage command names."""
    words = shlex.split(command.split("&&")[-1])
    return [w for w in words[words.index("pytest") + 1:] if not w.startswith("-")]


def _opt_in_tests():
    """{'path::name' or 'path' (a whole file)} of the tests that skip without torch or an env switch."""
    found = set()
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        rel = path.relative_to(ROOT).as_posix()
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        for node in tree.body:
            text = ast.get_source_segment(source, node) or ""
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                decorators = " ".join(ast.get_source_segment(source, d) or "" for d in node.decorator_list)
                if node.name.startswith("test_") and ("os.environ" in decorators or 'importorskip("torch"' in text):
                    found.add(f"{rel}::{node.name}")
            elif 'importorskip("torch"' in text:
                found.add(rel)  # a module-level skip: the whole file
    return found


def test_the_default_and_torch_stages_are_there():
    stages = _stages()
    assert list(stages) == ["default", "torch"]
    assert stages["default"] == "pip install -e '.[test]' && pytest -q"
    assert stages["torch"].startswith("pip install -e '.[test,torch]' && SVREID_SLOW_TESTS=1 pytest -q ")


def test_every_opt_in_test_runs_in_the_torch_stage():
    targets = set(_pytest_targets(_stages()["torch"]))
    opt_in = _opt_in_tests()
    # The scan must see the known ones (it could otherwise pass by finding nothing).
    assert {"tests/models/test_torch_parity.py",
            "tests/test_modes.py::test_splits_mode_trains_ten_models_and_aggregates"} <= opt_in
    missing = sorted(t for t in opt_in if t not in targets and t.split("::")[0] not in targets)
    assert not missing, f"opt-in tests CI never runs (add them to the torch stage of .ci/run and the README): {missing}"


def test_every_target_of_the_torch_stage_exists():
    for target in _pytest_targets(_stages()["torch"]):
        path, _, name = target.partition("::")
        assert (ROOT / path).is_file(), target
        if name:
            assert re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(encoding="utf-8"), re.M), target


def test_readme_shows_the_ci_commands_verbatim():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name, command in _stages().items():
        assert f"\n{command}\n" in readme, f"README lacks the {name} stage's command: {command}"
    assert "SVREID_SLOW_TESTS=1" in readme
