"""The Colab notebooks (colabs/*.ipynb): committed without outputs, and executable on CPU.

Each notebook runs top to bottom in a fresh python3 kernel with nbclient. Cells tagged
`skip-execution` (the Colab-only clone/install/Drive cells) are skipped, and small values are
injected papermill-style: a cell tagged `injected-parameters` is inserted after the cell tagged
`parameters`, so the notebooks themselves keep their Colab defaults. The demo data is generated
once and shared by the three notebooks; a persistent compilation cache lets the second and third
notebook reuse the train step the first one compiled.
"""
import os
import re

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(ROOT, "colabs")
NOTEBOOKS = sorted(f for f in os.listdir(COLABS) if f.endswith(".ipynb"))
BADGE_URL = "https://colab.research.google.com/github/svreid-jax/svreid_jax/blob/main/colabs/{}"
COLAB_ONLY = re.compile(r"^\s*(!|%pip|%cd|%load_ext|%tensorboard)|google\.colab", re.MULTILINE)


def _read(name):
    return nbformat.read(os.path.join(COLABS, name), as_version=4)


def _tagged(nb, tag):
    return [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]


def test_the_three_notebooks_are_there():
    assert {"quickstart.ipynb", "real_data.ipynb", "reproduce_baseline.ipynb"} <= set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean(name):
    nb = _read(name)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {i} has outputs: run tools/strip_notebooks.py"
            assert cell.execution_count is None, f"{name} cell {i} has an execution count: run tools/strip_notebooks.py"
        assert "execution" not in cell.get("metadata", {}), f"{name} cell {i} has execution timings"
        if cell.cell_type == "code" and COLAB_ONLY.search(cell.source):
            assert "skip-execution" in cell.metadata.get("tags", []), \
                f"{name} cell {i} is Colab-only (shell, %pip, Drive) but not tagged skip-execution"
    assert "widgets" not in nb.metadata
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "colab-badge.svg" in first.source
    assert BADGE_URL.format(name) in first.source
    params = _tagged(nb, "parameters")
    assert len(params) == 1 and params[0].cell_type == "code", f"{name}: exactly one code cell tagged 'parameters'"
    for line in params[0].source.splitlines():  # papermill-style: plain assignments and comments only
        assert not line.strip() or line.startswith("#") or re.match(r"^[a-z_][a-z0-9_]* = ", line), line
    assert not _tagged(nb, "injected-parameters")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_installs_on_the_runtime_jax(name):
    """The Colab install cell installs the project and leaves the runtime's jax as it is: no jax
    version or accelerator build of its own (Colab's TPU/GPU jax is kept)."""
    installs = [c for c in _read(name).cells if c.cell_type == "code" and "pip install" in c.source]
    assert installs, f"{name}: no install cell"
    for cell in installs:
        assert "skip-execution" in cell.metadata.get("tags", []), f"{name}: the install cell runs in CI"
        assert not re.search(r"jax(lib)?\s*\[|jax(lib)?\s*[=<>~]=", cell.source), f"{name}: the install cell pins jax"


def test_readme_lists_every_notebook_with_its_badge():
    with open(os.path.join(COLABS, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for name in NOTEBOOKS:
        assert BADGE_URL.format(name) in readme, name


# What CI injects: the micro demo run, and every output under pytest's temporary folder.
def _ci_parameters(name, tmp, data_root):
    return {
        "quickstart.ipynb": dict(micro=True, workdir=str(tmp / "quickstart"), data_root=data_root,
                                 num_queries=2, top_k=3),
        "real_data.ipynb": dict(micro=True, workdir=str(tmp / "real_data"), demo_root=data_root, mode="train",
                                pack=True),
        "reproduce_baseline.ipynb": dict(micro=True, workdir=str(tmp / "reproduce"), demo_root=data_root,
                                         checkpoint_path=""),
    }[name]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One demo-data folder and one compilation cache for the three notebooks."""
    base = tmp_path_factory.mktemp("notebooks")
    return {"data_root": str(base / "demo_data"), "cache": str(base / "jax_cache")}


@pytest.mark.slow  # each notebook trains and evaluates the micro demo in a kernel
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_cpu(name, tmp_path, shared, monkeypatch):
    from nbclient import NotebookClient

    nb = _read(name)
    values = _ci_parameters(name, tmp_path, shared["data_root"])
    params = _tagged(nb, "parameters")[0]
    declared = set(re.findall(r"^([a-z_][a-z0-9_]*) = ", params.source, re.MULTILINE))
    assert set(values) <= declared, f"{name}: CI sets {sorted(set(values) - declared)}, not in its parameters cell"
    injected = nbformat.v4.new_code_cell("# Injected by tests/test_notebooks.py\n" +
                                         "\n".join(f"{k} = {v!r}" for k, v in values.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(nb.cells.index(params) + 1, injected)

    # The kernel inherits this environment: CPU only, a compilation cache shared by the notebooks, and
    # the non-partitionable threefry that tests/conftest.py also uses (compiles faster: quickstart
    # 33 s → 25 s here; it changes which random numbers are drawn, not the code paths).
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", shared["cache"])
    monkeypatch.setenv("JAX_THREEFRY_PARTITIONABLE", "0")
    client = NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": ROOT}})
    client.execute()  # raises CellExecutionError (with the cell and its traceback) if any cell fails
    ran = [c for c in nb.cells if c.cell_type == "code" and "skip-execution" not in c.metadata.get("tags", [])]
    assert all(c.execution_count for c in ran), "a cell did not run"
    errors = [o for c in ran for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    if name == "real_data.ipynb":  # pack=True: training and evaluation read the packed shards, not the folders
        printed = "".join(o.get("text", "") for c in ran for o in c.outputs if o.output_type == "stream")
        reads = dict(re.findall(r"^(source|target) reads (.*)$", printed, re.MULTILINE))
        assert set(reads) == {"source", "target"}, printed[-2000:]
        assert all(os.path.isfile(os.path.join(reads[side], "dataset_info.json")) for side in reads), reads
