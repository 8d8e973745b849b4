"""The notebooks run top to bottom with their default settings, in time, and are stored clean.

Each notebook is executed in a fresh Jupyter kernel running this interpreter (so it sees the
ppvae under test); the cells' own ``assert`` statements check the facts the notebooks state,
and any error fails the test (``nbclient`` raises ``CellExecutionError``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = {
    "01_quickstart.ipynb",
    "02_extending_priors.ipynb",
    "03_estimating_log_likelihood.ipynb",
    "04_swapping_guides.ipynb",
    "05_anomaly_detection.ipynb",
    "06_vector_quantised.ipynb",
    "07_disentanglement.ipynb",
    "08_data_augmentation.ipynb",
}
KERNEL = "python3"
# Seconds per notebook, start to finish (and so per cell). With the default settings each
# notebook takes well under a minute on two idle CPU cores; the slack absorbs a busy machine.
BUDGET = 300
_EXECUTABLE_CELL = "import sys\nprint(sys.executable)"


def _kernel_command(name: str) -> list[str] | None:
    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        return None
    # format_kernel_cmd maps the spec's "python" to sys.executable, as a real launch does.
    return KernelManager(kernel_name=name).format_kernel_cmd()


def _runs_here(cmd: list[str] | None) -> bool:
    return bool(cmd) and os.path.realpath(cmd[0]) == os.path.realpath(sys.executable)


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``"python3"``, made to resolve to this interpreter (a temporary kernelspec if needed)."""
    with pytest.MonkeyPatch.context() as mp:
        if not _runs_here(_kernel_command(KERNEL)):
            # JUPYTER_PATH is searched first: a spec there shadows any other "python3".
            root = tmp_path_factory.mktemp("jupyter")
            spec_dir = root / "kernels" / KERNEL
            spec_dir.mkdir(parents=True)
            spec = {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (ppvae tests)",
                "language": "python",
            }
            (spec_dir / "kernel.json").write_text(json.dumps(spec))
            mp.setenv("JUPYTER_PATH", str(root))
        assert _runs_here(_kernel_command(KERNEL)), _kernel_command(KERNEL)
        yield KERNEL


def test_the_five_notebooks_are_there_and_listed() -> None:
    assert {p.name for p in NOTEBOOKS} == EXPECTED
    readme = (NOTEBOOK_DIR / "README.md").read_text(encoding="utf-8")
    for name in EXPECTED:
        assert name in readme, f"notebooks/README.md does not mention {name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a notebook without code"
    for i, cell in enumerate(code):
        assert cell.outputs == [], f"code cell {i} holds outputs: clear them before committing"
        assert cell.execution_count is None, f"code cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, kernel_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel inherits the environment: the inline backend, as in Jupyter, so that the
    # outputs show what a reader sees (each figure once); it needs no display.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    # One extra cell at the end (in memory only) reports which interpreter ran the notebook.
    nb.cells.append(nbformat.v4.new_code_cell(_EXECUTABLE_CELL))
    client = NotebookClient(
        nb,
        timeout=BUDGET,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    print(f"{path.name}: executed in {seconds:.1f} s")
    assert seconds < BUDGET, f"{path.name} took {seconds:.0f} s (budget {BUDGET} s)"
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    assert os.path.realpath(printed.strip()) == os.path.realpath(sys.executable)
    assert_outputs_read_cleanly(nb)


def assert_outputs_read_cleanly(nb: nbformat.NotebookNode) -> None:
    """Each figure is shown once, and no progress bar asks for widgets.

    A figure returned as a cell's value while pyplot still holds it is shown twice (once
    by the inline backend, once as the value): two identical images in one cell. tqdm's
    notebook bars without ipywidgets print an "IProgress not found" warning.
    """
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        images = [o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]
        assert len(images) == len(set(images)), f"code cell {i} shows a figure twice"
        for o in cell.outputs:
            text = o.get("text", "") + "".join(map(str, o.get("data", {}).values()))
            assert "IProgress" not in text, f"code cell {i}: {text[:200]}"
