"""The notebooks are code: each one runs top to bottom, and is stored without outputs.

Each notebook runs in a fresh `python3` kernel (ipykernel, a test dependency, provides it in the
interpreter running the tests, so nothing needs installing at run time) from a temporary copy of
`notebooks/`, so files a notebook writes never land in the repository.

Each notebook's `parameters` cell (the papermill convention) holds its full-size settings. A notebook
whose full run is too long for CI stores smaller ones as code in its metadata,
`{"bbvi": {"ci_parameters": "NUM_STEPS = 500"}}`, which the test runs right after that cell; then
`BBVI_NOTEBOOK_PARAMETERS="NUM_STEPS = 200"`, if set, shrinks every notebook further without editing it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 300
PARAMETERS_ENV = "BBVI_NOTEBOOK_PARAMETERS"
# Every program a notebook compiles is small and runs once: in CI, compile fast rather than well
# (as the benchmarks' smoke test does). The kernel inherits the test's environment when it starts.
FAST_COMPILE_FLAGS = " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # the kernel colours its tracebacks

by_name = pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])


def _require_kernel():
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        pytest.skip(
            f"no Jupyter kernel named {KERNEL_NAME!r}: install the test extras "
            "(pip install -e '.[test]', which brings ipykernel) in the interpreter running pytest"
        )


def _inject_parameters(nb, source: str) -> None:
    """Insert `source` as a code cell right after the cell tagged `parameters` (or at the top)."""
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(tagged[0] + 1 if tagged else 0, cell)


@pytest.mark.slow
@by_name
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch):
    _require_kernel()
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + FAST_COMPILE_FLAGS)
    workdir = tmp_path / NOTEBOOK_DIR.name
    shutil.copytree(NOTEBOOK_DIR, workdir)
    nb = nbformat.read(workdir / path.name, as_version=4)
    overrides = [nb.metadata.get("bbvi", {}).get("ci_parameters"), os.environ.get(PARAMETERS_ENV)]
    for source in reversed([o for o in overrides if o]):  # each goes right after `parameters`
        _inject_parameters(nb, source)

    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(workdir)}},  # the kernel's working directory
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        # The message holds the failing cell's source and the kernel's traceback.
        pytest.fail(f"{path.name} failed:\n{ANSI_ESCAPE.sub('', str(err))}", pytrace=False)


@by_name
def test_notebook_is_stored_clean(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"
