"""The Dask dashboard of a cluster the package starts works (bokeh, the ``dashboard`` extra)."""

from __future__ import annotations

import re
import urllib.request

import pytest

from xr_unmix.cluster import dask_scheduler

pytestmark = pytest.mark.slow


def test_dashboard_serves_status_page():
    with dask_scheduler(workers=1) as client:
        link = client.dashboard_link
        assert link.startswith("http://127.0.0.1:") and link.endswith("/status")
        with urllib.request.urlopen(link, timeout=30) as r:
            body = r.read().decode("utf-8", "replace")
        assert r.status == 200 and "bokeh" in body.lower()


@pytest.mark.parametrize("command", ["run", "batch"])
def test_workers_print_the_dashboard_link_once(tmp_path, command):
    from click.testing import CliRunner

    from xr_unmix.cli import main
    from xr_unmix.testing import make_cube

    cube, E, _ = make_cube(16, 16)
    cube.rio.to_raster(tmp_path / "s.tif")
    rows = [f"{w}," + ",".join(repr(float(v)) for v in E.values[i])
            for i, w in enumerate(E.wavelength.values)]
    (tmp_path / "em.csv").write_text("wavelength,m0,m1,m2\n" + "\n".join(rows) + "\n")
    out = ["--out", str(tmp_path / "ab.tif")] if command == "run" else [
        "--out-dir", str(tmp_path / "o")]
    r = CliRunner().invoke(main, [command, str(tmp_path / "s.tif"), "--endmembers",
                                  str(tmp_path / "em.csv"), "--workers", "1", *out])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if "dashboard" in ln.lower()]
    assert len(lines) == 1, r.output
    assert re.fullmatch(r"Dask dashboard: http://127\.0\.0\.1:\d+/status", lines[0]), lines
