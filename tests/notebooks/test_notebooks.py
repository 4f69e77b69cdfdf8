"""The example notebooks: stored without outputs, up to date with their sources, and run top to bottom.

Each notebook is executed with nbclient in a kernel running this test's own
interpreter (the orchestrator's ``.venv``), against real local services
(started by the session's manager, whose state folder the notebooks share
through ``$OPSEF_STATE_DIR``) and the real data in ``../shared/data``.
Outputs go to a temporary folder (``$OPSEF_NOTEBOOK_OUTPUT``).
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
KERNEL = "opsef-test-venv"


def _build_module():
    spec = importlib.util.spec_from_file_location("opsef_notebooks_build", NOTEBOOKS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_five_notebooks_exist():
    assert NAMES == ["01_small_fluorescent_nuclei.ipynb", "02_histology.ipynb", "03_nuclei_3d.ipynb",
                     "04_postprocessing_classification.ipynb", "05_imagej_round_trip.ipynb"]


def test_stored_notebooks_match_their_sources():
    build = _build_module()
    stale = [dst.name for src, dst in build.targets().items() if dst.read_text() != build.render(build.notebook_from_source(src))]
    assert not stale, f"stale notebooks {stale}: run `python notebooks/build.py`"
    assert build.main(["--check"]) == 0


@pytest.mark.parametrize("name", NAMES)
def test_stored_notebooks_carry_no_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name} cell {cell.id} has stored outputs"


@pytest.fixture(scope="module")
def venv_kernel(tmp_path_factory, monkeypatch_module):
    """A kernelspec, in a temporary Jupyter path, that runs this interpreter's ipykernel."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "OpSeF test (.venv)", "language": "python"}))
    monkeypatch_module.setenv("JUPYTER_PATH", str(root))
    monkeypatch_module.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return KERNEL


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _execute(nb, kernel: str, cwd: Path, timeout: int = 600):
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=timeout, allow_errors=False,
                                     resources={"metadata": {"path": str(cwd)}})
    return client.execute()


def test_kernel_runs_this_interpreter(venv_kernel, tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix); print(sys.executable)"))
    out = _execute(nb, venv_kernel, tmp_path, timeout=120)
    prefix, executable = out.cells[0].outputs[0]["text"].split()
    assert Path(prefix).resolve() == Path(sys.prefix).resolve()
    assert executable == sys.executable


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name, venv_kernel, manager, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("OPSEF_STATE_DIR", str(manager.state_dir))
    monkeypatch.delenv("OPSEF_ENDPOINTS", raising=False)
    monkeypatch.setenv("OPSEF_NOTEBOOK_OUTPUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    out = _execute(nb, venv_kernel, NOTEBOOKS)
    pictures = 0
    for cell in out.cells:
        for o in cell.get("outputs", []):
            assert o["output_type"] != "error", f"{name} cell {cell.id}: {o.get('ename')}: {o.get('evalue')}"
            if o["output_type"] == "stream" and o["name"] == "stderr":
                assert "Traceback" not in o["text"] and "ERROR" not in o["text"], f"{name} cell {cell.id}: {o['text']}"
            pictures += "image/png" in o.get("data", {})
    assert pictures >= 3, f"{name} shows {pictures} pictures inline"
    assert not (NOTEBOOKS / "outputs").exists() or not any((NOTEBOOKS / "outputs").iterdir()), "wrote into notebooks/outputs"
