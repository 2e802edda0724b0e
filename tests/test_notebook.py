"""docs/quickstart.ipynb runs headless (nbclient) and stays clean: no error, no warning, no stray
progress lines (a progress bar is one widget, or nothing)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import nbclient  # the test extra
import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "quickstart.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"

pytestmark = pytest.mark.slow


def _text(out: dict) -> str:
    if out.get("output_type") == "stream":
        return out.get("text", "")
    return json.dumps(out.get("data", {}).get("text/plain", ""))


def test_quickstart_runs_clean(tmp_path):
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
