"""Config files that import their siblings, from any working directory.

The files under configs/ share code through their package (`from configs import targets`). Loaded by
path (--config=/abs/path/configs/mars.py), such a file finds `configs` only if its parent folder is
on sys.path, which holds for `python -m` run from the repository root and for nothing else: not the
`svreid-jax` console command (whose sys.path starts at its own bin/ folder), not another working
directory. So before --config is loaded, the folder that holds the file, if it is a package, is made
importable under its own name, from that folder: the siblings a config file gets are always those
beside it, wherever it is run from, and nothing else on disk becomes importable.
"""
import importlib.util
import os
import sys
from collections.abc import Sequence


def config_paths(argv: Sequence[str]) -> list[str]:
    """The file part of every --config value in argv (`--config=F[:arg]` or `--config F[:arg]`)."""
    values = [value for flag, value in zip(argv, argv[1:]) if flag == "--config"]
    values += [arg.partition("=")[2] for arg in argv if arg.startswith("--config=")]
    return [value.partition(":")[0] for value in values]


def import_package_of(path: str) -> None:
    """Make the package that holds the config file `path` importable under its folder's name.

    Does nothing when the folder is no package (no __init__.py) or when a module of that name is
    already imported (a notebook or test that did `from configs import demo` keeps its own)."""
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(folder)
    init = os.path.join(folder, "__init__.py")
    if not name.isidentifier() or not os.path.isfile(init) or name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[folder])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        del sys.modules[name]
        raise
