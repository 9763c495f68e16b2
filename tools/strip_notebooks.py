"""Strip outputs from notebooks before committing them.

  python tools/strip_notebooks.py [--check] [NOTEBOOK ...]      (default: colabs/*.ipynb)

Removes outputs, execution counts, and the run-time metadata that Jupyter and Colab add
(per-cell `execution`, `executionInfo`, `outputId`, `collapsed`, `scrolled`, `ExecuteTime`, Colab's
per-cell `colab` block; the notebook's `widgets`, and `language_info` down to its name). Cell tags (`parameters`, `skip-execution`) and ids
stay. With --check nothing is written and the exit status is 1 if any notebook would change
(tests/test_notebooks.py asserts the same for colabs/).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import nbformat

_CELL_KEYS = ("execution", "executionInfo", "outputId", "collapsed", "scrolled", "ExecuteTime", "colab")
_NOTEBOOK_KEYS = ("widgets",)


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Strip `nb` in place and return it."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in _CELL_KEYS:
            cell.metadata.pop(key, None)
    for key in _NOTEBOOK_KEYS:
        nb.metadata.pop(key, None)
    if "language_info" in nb.metadata:  # execution fills in the kernel's Python version and more
        nb.metadata["language_info"] = {"name": nb.metadata["language_info"].get("name", "python")}
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a notebook is not stripped")
    parser.add_argument("notebooks", nargs="*")
    args = parser.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = args.notebooks or sorted(glob.glob(os.path.join(root, "colabs", "*.ipynb")))
    dirty = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            before = f.read()
        nb = strip(nbformat.reads(before, as_version=4))
        after = nbformat.writes(nb) + "\n"
        if after != before:
            dirty.append(path)
            if not args.check:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(after)
    for path in dirty:
        print(f"{'not stripped' if args.check else 'stripped'}: {path}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
