"""The package as others install and run it: metadata (pyproject.toml, constraints.txt, the licence),
a config file given by path from another working directory, and (slow) `pip install -e .` into a
virtualenv that already holds an older JAX, which it must keep.
"""
import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement  # pytest's own dependency
from packaging.utils import canonicalize_name

from svreid_jax import config_files

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Declared but never imported by our code, each for a reason.
NOT_IMPORTED = {
    "ipykernel": "the kernel tests/test_notebooks.py runs the notebooks in",
    "pytest-timeout": "a pytest plugin (pytest.ini's timeout)",
    "flatbuffers": "jax.export's serialization (evaluation/export.py, evaluation/embedder.py); jax imports it",
}
# The JAX a machine already had in tests/test_install.py: the oldest the ranges admit.
OLD_JAX = "0.10.0"


def _source_version():
    tree = ast.parse((ROOT / "svreid_jax" / "__init__.py").read_text(encoding="utf-8"))
    return next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                and [t.id for t in n.targets if isinstance(t, ast.Name)] == ["__version__"])


def _requirements(extra=None):
    project = PYPROJECT["project"]
    return [Requirement(r) for r in (project["optional-dependencies"][extra] if extra else project["dependencies"])]


def _constraints():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: not an exact pin: {line}"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _imported_top_level_names():
    names = set()
    for folder in ("svreid_jax", "configs", "tests", "benchmarks", "tools"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module.split(".")[0])
    return names


def test_the_version_is_one_literal_that_the_build_reads_without_importing():
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "svreid_jax.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", _source_version())
    # Importing the package is cheap: no jax until a submodule needs it.
    done = subprocess.run([sys.executable, "-c", "import sys, svreid_jax; print(svreid_jax.__version__, "
                           "sorted(m for m in ('jax', 'flax', 'tensorflow_datasets') if m in sys.modules))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(maxsplit=1) == [_source_version(), "[]\n"]


def test_the_licence_and_the_citation_are_there():
    assert PYPROJECT["project"]["license"] == "Apache-2.0" and PYPROJECT["project"]["license-files"] == ["LICENSE"]
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "Copyright 2026 The svreid_jax Authors" in licence
    citation = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert "cff-version: 1.2.0" in citation and "2402.02108" in citation
    assert f"version: {_source_version()}\n" in citation and "license: Apache-2.0\n" in citation


def test_the_console_command_is_mains_entry_point():
    assert PYPROJECT["project"]["scripts"] == {"svreid-jax": "svreid_jax.main:run"}
    from svreid_jax import main

    assert callable(main.run)


def test_every_declared_package_is_imported_and_pinned_within_its_range():
    imported = _imported_top_level_names()
    top_level = importlib.metadata.packages_distributions()  # import name -> the distributions providing it
    provided = {canonicalize_name(d) for name in imported for d in top_level.get(name, ())}
    provided |= {canonicalize_name(name) for name in imported}  # an extra not installed here (torch)
    pins = _constraints()
    for extra in (None, "test", "torch"):
        for requirement in _requirements(extra):
            name = canonicalize_name(requirement.name)
            assert name in provided or name in NOT_IMPORTED, f"declared, but nothing imports it: {requirement}"
            assert name in pins, f"constraints.txt lacks {name}"
            assert requirement.specifier.contains(pins[name]), f"constraints.txt pins {name}=={pins[name]}, " \
                                                               f"outside {requirement}"
    assert "svreid-jax" not in pins and "pip" not in pins and "setuptools" not in pins
    assert _requirements("torch") == [Requirement("torch==2.13.0")]


def test_config_paths_reads_both_spellings_of_the_flag():
    argv = ["svreid-jax", "--config=/a/configs/mars.py:plus", "--workdir=w", "--config", "b/demo.py", "--configx=c"]
    assert config_files.config_paths(argv) == ["b/demo.py", "/a/configs/mars.py"]


def _outside_the_checkout(tmp_path):
    """(working directory, environment) where this checkout's package, and nothing else of the
    repository, is importable: configs/ can only be found through a --config path."""
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    site.mkdir()
    elsewhere.mkdir()
    (site / "svreid_jax").symlink_to(ROOT / "svreid_jax")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env.update(PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('configs'))"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "None", probe.stdout + probe.stderr
    return elsewhere, env


# What the console command's wrapper script runs: a __main__ that is not svreid_jax.main, the working
# directory first on sys.path.
CONSOLE = [sys.executable, "-c", "import sys; from svreid_jax.main import run; sys.argv[0] = 'svreid-jax'; run()"]


def test_the_console_commands_help_lists_the_flags(tmp_path):
    elsewhere, env = _outside_the_checkout(tmp_path)
    done = subprocess.run(CONSOLE + ["--help"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert "Command line: svreid-jax" in done.stdout and "--workdir:" in done.stdout, done.stdout + done.stderr


def test_a_config_file_given_by_path_runs_from_another_working_directory(tmp_path):
    # The missing root fails right after the config is loaded and checked.
    elsewhere, env = _outside_the_checkout(tmp_path)
    command = CONSOLE + [f"--config={ROOT / 'configs' / 'demo.py'}:paper,micro", f"--workdir={tmp_path / 'run'}",
                         "--config.data.demo=False", f"--config.data.source.root={tmp_path / 'nowhere'}"]
    done = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "svreid_jax: data error:" in done.stderr and "nowhere" in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def _run(command, **kwargs):
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


@pytest.mark.slow  # a virtualenv, JAX and every dependency from the package index, then the micro demo
@pytest.mark.timeout(1800)
def test_install_beside_an_older_jax_keeps_it_and_runs_the_demo(tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    python, console = venv / "bin" / "python", venv / "bin" / "svreid-jax"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(JAX_PLATFORMS="cpu", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    pip = [str(python), "-m", "pip", "install", "-q"]
    _run(pip + ["--upgrade", "pip"], env=env, timeout=600)
    _run(pip + [f"jax=={OLD_JAX}", f"jaxlib=={OLD_JAX}"], env=env, timeout=900)
    # No constraints file: pip resolves the declared ranges against the JAX already there.
    _run(pip + ["-e", str(ROOT)], env=env, timeout=1200)
    _run([str(python), "-m", "pip", "check"], env=env, timeout=120)
    versions = _run([str(python), "-c", "import jax, jaxlib; print(jax.__version__, jaxlib.__version__)"],
                    env=env, timeout=120)
    assert versions.split() == [OLD_JAX, OLD_JAX]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    printed = _run([str(python), "-c", "import svreid_jax; print(svreid_jax.__version__)"], cwd=elsewhere, env=env,
                   timeout=120)
    assert printed.strip() == _source_version()
    helped = subprocess.run([str(console), "--help"], cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=300)
    assert "--workdir:" in helped.stdout, helped.stderr[-3000:]  # (absl's --help exits 1 after printing)
    workdir = tmp_path / "run"
    _run([str(console), f"--config={ROOT / 'configs' / 'demo.py'}:paper,micro", f"--workdir={workdir}"],
         cwd=elsewhere, env=env, timeout=900)
    assert (workdir / "results.json").is_file()
