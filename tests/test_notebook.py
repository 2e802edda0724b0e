"""docs/quickstart.ipynb runs headless (nbclient) and stays clean: no error, no warning, no stray
progress lines (a progress bar is one widget, or nothing)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbclient  # the test extra
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "quickstart.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"

pytestmark = pytest.mark.slow


def _text(out: dict) -> str:
    if out.get("output_type") == "stream":
        return out.get("text", "")
    return json.dumps(out.get("data", {}).get("text/plain", ""))


def test_quickstart_runs_clean(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    nb = nbformat.read(tmp_path / NOTEBOOK.name, as_version=4)
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    streams = [o for o in outputs if o.output_type == "stream"]
    assert not [o for o in streams if o.name == "stderr"], [o.text for o in streams]  # warnings
    for o in outputs:
        t = _text(o)
        assert "Warning" not in t and "\r" not in t and "%|" not in t, t[:300]
    # write(..., progress=True) showed its bars as widgets, emptied once done: nothing is left
    assert not [o for o in outputs if WIDGET in o.get("data", {})]
    emptied = [o for o in outputs if o.output_type == "display_data" and not o.get("data")]
    assert 1 <= len(emptied) <= 2  # one bar per computation (the Zarr store, then COG + RMSE)
    assert (tmp_path / "abundance.tif").exists() and (tmp_path / "abundance_rmse.zarr").exists()
    printed = "".join(o.text for o in streams if o.name == "stdout")
    assert printed.count("EPSG:32633") == 2, printed  # xarray and GDAL agree on the CRS
    png = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(png) == 1


def test_batch_bar_in_a_notebook_leaves_nothing(tmp_path, monkeypatch):
    """``run_batch(progress=True)`` in a kernel: the scene bar is a widget that is emptied when the
    batch ends, so the saved notebook keeps no bar and no progress text."""
    src = ROOT / "sample_scenes"
    for name in ("a", "b"):
        shutil.copy(src / "scene_a.tif", tmp_path / f"{name}.tif")
    shutil.copy(src / "endmembers.csv", tmp_path / "endmembers.csv")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from xr_unmix.batch import run_batch\n"
        "r = run_batch(['a.tif', 'b.tif'], out_dir='out', method='fcls', "
        "endmembers='endmembers.csv', formats=['tif'], chunk=64, progress=True)\n"
        "import xr_unmix; print(r['summary']['done'], xr_unmix.__file__)")])
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    assert not [o for o in outputs if o.output_type == "error"], outputs
    assert [o.text for o in outputs if o.output_type == "stream"] == [
        f"2 {ROOT / 'xr_unmix' / '__init__.py'}\n"]  # this checkout's package, not an installed one
    assert not [o for o in outputs if WIDGET in o.get("data", {})]
    assert len([o for o in outputs if o.output_type == "display_data" and not o.get("data")]) == 1
    for o in outputs:
        assert "%|" not in _text(o) and "\r" not in _text(o)
