"""Static checks of svreid_jax: no import cycles, imports point down the layers, and the array
operations of svreid_jax/ops.py are written nowhere else.

Why static: importing the package needs jax/grain/flags and hides function-level imports, which are
exactly where the cycles live. So every .py under svreid_jax/ is parsed with `ast` and EVERY import
(module level, inside functions, classes, try/if blocks) becomes an edge; only `if TYPE_CHECKING:`
bodies are skipped, since they never run. Importing a.b does not count as importing a.
"""
import ast
import collections
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "svreid_jax"

# Layer name -> module prefixes (a prefix matches itself and its submodules; absent modules are fine).
LAYERS = {
    "base": ("svreid_jax.data", "svreid_jax.models", "svreid_jax.losses", "svreid_jax.clustering",
             "svreid_jax.interop", "svreid_jax.kreciprocal", "svreid_jax.ops"),
    "utils": ("svreid_jax.utils", "svreid_jax.state"),
    "variants": ("svreid_jax.variants",),
    "parallel": ("svreid_jax.parallel",),
    "builders": ("svreid_jax.builders",),
    "evaluation": ("svreid_jax.evaluation",),
    "config_checks": ("svreid_jax.config_checks",),
    "train": ("svreid_jax.train",),
    "splits": ("svreid_jax.splits",),
    "main": ("svreid_jax.main",),
}
# Layer -> layers it may not import. Layers not listed here are unrestricted.
MAY_NOT_IMPORT = {
    "base": ("variants", "parallel", "builders", "train", "evaluation", "splits", "main", "config_checks"),
    "utils": ("train", "splits", "main", "evaluation", "variants", "builders", "config_checks"),
    "builders": ("train", "splits", "main", "evaluation", "config_checks"),
    "evaluation": ("train", "main", "splits", "config_checks"),
    "config_checks": ("train", "splits", "main"),
    "train": ("splits", "main"),
    "splits": ("main",),
    "variants": ("train", "splits", "main", "evaluation", "builders", "config_checks"),
    "parallel": ("train", "splits", "main", "evaluation", "builders", "variants", "config_checks"),
}


def _module_files(root, package):
    """Module name -> file path for every .py under root/package."""
    out = {}
    for path in sorted((Path(root) / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _name(expr):
    return getattr(expr, "id", getattr(expr, "attr", None))  # Name.id or Attribute.attr


def _imports(node):
    """Yield every Import/ImportFrom under node, skipping `if [typing.]TYPE_CHECKING:` bodies (their
    else/elif branches do run, so those are kept)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _name(child.test) == "TYPE_CHECKING":
            yield from _imports(ast.Module(body=child.orelse, type_ignores=[]))
        else:
            yield from _imports(child)


def build_graph(root, package):
    """Return {(importer, imported): [(relpath, lineno), ...]} for imports of `package` inside it."""
    modules = _module_files(root, package)
    edges = collections.defaultdict(list)
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        rel = path.relative_to(root).as_posix()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this file's package
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module
                for alias in node.names:
                    sub = f"{prefix}.{alias.name}"
                    targets.append(sub if sub in modules else prefix)
            for target in dict.fromkeys(targets):  # one site per statement, even for `import a, b`
                if target == package or target.startswith(package + "."):
                    edges[(mod, target)].append((rel, node.lineno))
    return dict(edges)


def find_cycles(edges):
    """One shortest cycle through each edge that lies in a cycle (SCC >1 node or self-loop), deduped."""
    graph = collections.defaultdict(set)
    for src, dst in edges:
        graph[src].add(dst)
    cycles = set()
    for src, dst in sorted(edges):
        if src == dst:
            cycles.add((src,))
            continue
        prev, queue = {dst: None}, collections.deque([dst])  # BFS for a shortest path dst -> src
        while queue and src not in prev:
            node = queue.popleft()
            for nxt in sorted(graph[node]):
                if nxt not in prev:
                    prev[nxt] = node
                    queue.append(nxt)
        if src not in prev:  # edge is not on any cycle
            continue
        path, node = [], src
        while node is not None:
            path.append(node)
            node = prev[node]
        cycle = [src] + path[::-1][:-1]  # src, dst, ..., (back to src)
        i = cycle.index(min(cycle))
        cycles.add(tuple(cycle[i:] + cycle[:i]))
    return sorted(cycles)


def cycle_report(root, package):
    """Readable lines, one block per cycle: the chain, then file:line of each edge's import(s)."""
    edges = build_graph(root, package)
    lines = []
    for cycle in find_cycles(edges):
        chain = list(cycle) + [cycle[0]]
        lines.append(" -> ".join(chain))
        for a, b in zip(chain, chain[1:]):
            where = ", ".join(f"{f}:{n}" for f, n in edges[(a, b)])
            lines.append(f"    {a} -> {b}  ({where})")
    return lines


def _layer(module):
    hits = [(len(p), name) for name, prefixes in LAYERS.items() for p in prefixes
            if module == p or module.startswith(p + ".")]
    return max(hits)[1] if hits else None


def layer_violations(root, package):
    """`file:line: importer -> imported (layer -> layer)` for every import a rule forbids."""
    out = []
    for (src, dst), sites in sorted(build_graph(root, package).items()):
        src_layer, dst_layer = _layer(src), _layer(dst)
        if dst_layer in MAY_NOT_IMPORT.get(src_layer, ()):
            out += [f"{f}:{n}: {src} -> {dst}  ({src_layer} may not import {dst_layer})"
                    for f, n in sites]
    return out


def _sanity(root):
    """Guard against a vacuous pass: the walker must see the package and some imports."""
    assert PACKAGE in _module_files(root, PACKAGE) and build_graph(root, PACKAGE), "nothing found"


def test_no_import_cycles():
    _sanity(ROOT)
    report = cycle_report(ROOT, PACKAGE)
    if report:
        pytest.fail("import cycles in svreid_jax:\n" + "\n".join(report), pytrace=False)


def test_imports_point_downward():
    _sanity(ROOT)
    bad = layer_violations(ROOT, PACKAGE)
    if bad:
        pytest.fail("upward imports in svreid_jax:\n" + "\n".join(bad), pytrace=False)


# --- self-tests on synthetic trees: the checks above must be able to fail -------------------------

def _write(root, files):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_synthetic_cycle_is_reported(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "import pkg.b\n",
                      "pkg/b.py": "def f():\n    import pkg.a\n", "pkg/c.py": "from pkg import a\n"})
    report = "\n".join(cycle_report(tmp_path, "pkg"))
    assert report.splitlines()[0] == "pkg.a -> pkg.b -> pkg.a", report
    assert "pkg.a -> pkg.b  (pkg/a.py:1)" in report and "pkg.b -> pkg.a  (pkg/b.py:2)" in report
    assert "pkg.c" not in report
    _write(tmp_path, {"pkg/c.py": "from . import c\n"})  # self-loop
    assert "pkg.c -> pkg.c" in cycle_report(tmp_path, "pkg")


def test_synthetic_upward_import_is_reported(tmp_path):
    _write(tmp_path, {"svreid_jax/__init__.py": "", "svreid_jax/train.py": "from svreid_jax.data import x\n",
                      "svreid_jax/data/__init__.py": "",
                      "svreid_jax/data/x.py":
                          "try:\n    pass\nexcept ImportError:\n    from svreid_jax import train\n"})
    assert layer_violations(tmp_path, "svreid_jax") == [
        "svreid_jax/data/x.py:4: svreid_jax.data.x -> svreid_jax.train  (base may not import train)"]


def test_synthetic_relative_imports_resolve(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/top.py": "", "pkg/sub/__init__.py": "from . import a\n",
                      "pkg/sub/b.py": "x = 1\n", "pkg/sub/c.py": "",
                      "pkg/sub/a.py":
                          "from .b import x\nfrom . import c\nfrom .. import top\nfrom ..sub.c import y\n"})
    edges = build_graph(tmp_path, "pkg")
    assert edges[("pkg.sub.a", "pkg.sub.b")] == [("pkg/sub/a.py", 1)]
    assert edges[("pkg.sub.a", "pkg.sub.c")] == [("pkg/sub/a.py", 2), ("pkg/sub/a.py", 4)]
    assert edges[("pkg.sub.a", "pkg.top")] == [("pkg/sub/a.py", 3)]
    assert ("pkg.sub", "pkg.sub.a") in edges


def test_synthetic_type_checking_imports_ignored(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/b.py": "", "pkg/c.py": "", "pkg/d.py": "",
                      "pkg/a.py": "import typing\nfrom typing import TYPE_CHECKING\n"
                                  "if TYPE_CHECKING:\n    from pkg import b\nelse:\n    from pkg import c\n"
                                  "if typing.TYPE_CHECKING:\n    import pkg.d\n"})
    assert set(build_graph(tmp_path, "pkg")) == {("pkg.a", "pkg.c")}


# --- one implementation per shared array operation --------------------------------------------
# L2 normalisation, camera centring and batch-norm moments live in svreid_jax/ops.py. Elsewhere in the
# package these are reported: a function whose name says it is one of them, and the computations
# themselves in the forms they have been written in:
#   x / ... norm(...) ...                       L2 normalisation (also via sqrt of a sum)
#   mean(square(a - b)), ((a - b) ** 2).mean()   a variance: batch moments
#   a - x[rows].mean(...), a - (same @ x) / n    a row minus its group's mean: camera centring

OPS_FILE = "svreid_jax/ops.py"
_OPERATION_NAME = re.compile(r"l2_?normali[sz]e|centre|center|moments", re.IGNORECASE)


def _is_call(node, *names):
    return isinstance(node, ast.Call) and _name(node.func) in names


def _has_call(node, *names):
    return any(_is_call(n, *names) for n in ast.walk(node))


def _is_difference(node):
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub)


def _is_squared_difference(node):
    if _is_call(node, "square") and node.args:
        return _is_difference(node.args[0])
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and _is_difference(node.left)


def _is_group_mean(node):
    """x[rows].mean(...), mean(x[rows], ...) or (same @ x) / n."""
    if _is_call(node, "mean"):
        return isinstance(getattr(node.func, "value", None), ast.Subscript) or bool(
            node.args and isinstance(node.args[0], ast.Subscript))
    return (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.left, ast.BinOp)
            and isinstance(node.left.op, ast.MatMult))


def _operation_written_out(node):
    """What `node` computes of ops.py's operations, or None."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _OPERATION_NAME.search(node.name):
        return f"defines {node.name}(), named as an operation of ops.py"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and (
            _has_call(node.right, "norm") or any(_is_call(n, "sqrt") and _has_call(n, "sum", "square")
                                                 for n in ast.walk(node.right))):
        return "divides by a norm: L2 normalisation (ops.l2_normalise)"
    if _is_call(node, "mean") and (_is_squared_difference(getattr(node.func, "value", None)) or bool(
            node.args and _is_squared_difference(node.args[0]))):
        return "mean of a squared difference: batch moments (ops.batch_moments)"
    if (_is_difference(node) and _is_group_mean(node.right)) or (
            isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Sub) and _is_group_mean(node.value)):
        return "subtracts a group's mean: camera centring (ops.camera_centred)"
    return None


def operations_written_out(root, package, ops_file=OPS_FILE):
    """`file:line: what` for each place outside `ops_file` that computes one of its operations."""
    out = []
    for path in sorted((Path(root) / package).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == ops_file:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            what = _operation_written_out(node)
            if what:
                out.append(f"{rel}:{node.lineno}: {what}")
    return sorted(out, key=lambda line: (line.split(":")[0], int(line.split(":")[1])))


def test_each_array_operation_is_written_once():
    tree = ast.parse((ROOT / OPS_FILE).read_text(encoding="utf-8"))
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"l2_normalise", "camera_centred", "batch_moments"} <= defined, defined
    bad = operations_written_out(ROOT, PACKAGE)
    if bad:
        pytest.fail("written out again instead of calling svreid_jax/ops.py:\n" + "\n".join(bad), pytrace=False)


def test_synthetic_copies_of_the_operations_are_reported(tmp_path):
    # ops.py itself, copied elsewhere: every one of its operations is caught.
    _write(tmp_path, {"svreid_jax/__init__.py": "", "svreid_jax/ops.py": (ROOT / OPS_FILE).read_text(),
                      "svreid_jax/copy.py": (ROOT / OPS_FILE).read_text()})
    found = "\n".join(operations_written_out(tmp_path, "svreid_jax"))
    assert "svreid_jax/ops.py" not in found
    for what in ("defines l2_normalise()", "defines camera_centred()", "defines batch_moments()",
                 "divides by a norm", "mean of a squared difference", "subtracts a group's mean"):
        assert what in found, (what, found)
    # The other ways these have been written, each in a function of an innocent name.
    _write(tmp_path, {"svreid_jax/copy.py": "", "svreid_jax/other.py": (
        "def a(x):\n    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)\n"
        "def b(x):\n    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))\n"
        "def c(x, m):\n    return jnp.mean(jnp.square(x - m), axis=(0, 1))\n"
        "def d(x, m):\n    return ((x - m) ** 2).mean(0)\n"
        "def e(f, rows):\n    out = f.copy()\n    out[rows] = f[rows] - f[rows].mean(axis=0)\n"
        "def f(x, same, n):\n    return x - (same @ x) / n\n"
        "def g(x, rows):\n    x[rows] -= np.mean(x[rows], 0)\n")})
    assert [line.split(": ", 1)[0] for line in operations_written_out(tmp_path, "svreid_jax")] == [
        f"svreid_jax/other.py:{n}" for n in (2, 4, 6, 8, 11, 13, 15)]
    # Neighbours that are other operations stay quiet: a distance, a standardisation, an RMS scale.
    _write(tmp_path, {"svreid_jax/other.py": (
        "def a(x, c):\n    return np.mean(np.linalg.norm(x - c, axis=1))\n"
        "def b(x):\n    m, s = x.mean(0), x.std(0)\n    return (x - m) / s\n"
        "def c(x):\n    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + 1e-6)\n")})
    assert operations_written_out(tmp_path, "svreid_jax") == []


# --- the training loop and the comments -----------------------------------------------------------

MAX_TRAIN_FUNCTION_LINES = 80
HISTORY = re.compile(r"20\d\d-\d\d-\d\d|sandbox")


def long_functions(path, limit=MAX_TRAIN_FUNCTION_LINES):
    """[(name, lines)] of the functions and methods in `path` longer than `limit` lines."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    return [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit]


def test_train_py_functions_fit_a_screen():
    """The loop and its helpers stay readable: no function in train.py over 80 lines."""
    assert long_functions(ROOT / PACKAGE / "train.py") == []


def test_a_long_function_is_reported(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_TRAIN_FUNCTION_LINES))
    path = tmp_path / "train.py"
    path.write_text(f"def short():\n    return 1\n\n\ndef loop():\n{body}\n", encoding="utf-8")
    assert long_functions(path) == [("loop", MAX_TRAIN_FUNCTION_LINES + 1)]


def history_lines(root):
    """'path:line' of comments or strings in svreid_jax/ and configs/ that carry a date or a machine
    ('sandbox'): figures and their history belong in BENCHMARKS.md, reasons in comments."""
    hits = []
    for folder in (PACKAGE, "configs"):
        for path in sorted((Path(root) / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if HISTORY.search(line):
                    hits.append(f"{path.relative_to(root)}:{number}")
    return hits


def test_code_comments_carry_no_dates_or_machines(tmp_path):
    assert history_lines(ROOT) == []
    _write(tmp_path, {"svreid_jax/__init__.py": "", "configs/demo.py": "# as it was until 2026-11-27\nx = 1\n",
                      "svreid_jax/a.py": "'''an hour in the 2-core sandbox'''\n"})
    assert history_lines(tmp_path) == ["svreid_jax/a.py:1", "configs/demo.py:1"]
