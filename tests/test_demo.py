"""The sample scenes and ``make demo``'s code path, end to end."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

import xr_unmix
from xr_unmix.demo import run_demo, sample_scene_dir


def test_open_cube_decodes_gdal_scale():
    """scene_a stores uint16 reflectance x 10000 with GDAL scale 1e-4: open_cube gives reflectance."""
    path = sample_scene_dir() / "scene_a.tif"
    with rasterio.open(path) as src:
        raw = src.read(1).astype(float)
        nodata = src.nodata
    cube = xr_unmix.open_cube(path)
    assert cube.dtype.kind == "f"
    band = cube.isel(band=0).values
    ok = raw != nodata
    np.testing.assert_allclose(band[ok], raw[ok] * 1e-4, rtol=1e-6)
    assert np.isnan(band[~ok]).all() and (~ok).sum() == 7
    assert 0 < float(cube.max()) < 1.5  # reflectance, like the endmember CSV


def test_demo_end_to_end(tmp_path):
    res = run_demo(tmp_path)
    # FCLS with the true endmembers on a 30 dB scene: the README of sample_scenes says about 0.011
    assert res["rmse"] < 0.02
    cog = xr_unmix.open_abundance(res["cog"])
    zarr = xr.open_zarr(res["zarr"], decode_coords="all")
    assert cog.rio.crs.to_epsg() == 32633
    assert list(cog.endmember.values) == ["green_vegetation", "soil", "npv", "impervious"]
    assert res["png"].exists() and res["quality"].exists()
    s = cog.sum("endmember", skipna=False).values
    assert np.isnan(s).sum() == 7
    np.testing.assert_allclose(s[np.isfinite(s)], 1.0, atol=1e-3)
    # the Zarr product holds the same map as the COG
    z = zarr["abundance"] if "abundance" in zarr else next(iter(zarr.data_vars.values()))
    np.testing.assert_allclose(z.transpose(*cog.dims).values, cog.values, rtol=0, atol=1e-6, equal_nan=True)


@pytest.mark.slow
def test_demo_from_the_wheel_outside_the_checkout(tmp_path):
    """`pip install` of the wheel into a folder, then `xr-unmix demo` from an unrelated cwd: the
    sample scene comes from the package itself."""
    root = Path(__file__).resolve().parents[1]
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=240, check=False)
    r = run([sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path / "whl")],
            cwd=root)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "whl").glob("xr_unmix-*.whl")
    site = tmp_path / "site"
    r = run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
             "--target", str(site), str(wheel)])
    assert r.returncode == 0, r.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = run([sys.executable, "-c", "import xr_unmix, sys; print(xr_unmix.__file__)"], cwd=work, env=env)
    assert r.stdout.strip().startswith(str(site)), r.stdout + r.stderr  # not the checkout's
    r = run([str(site / "bin" / "xr-unmix"), "demo", "--out", "out"], cwd=work, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert str(site / "xr_unmix" / "sample_scenes" / "scene_a.tif") in r.stdout
    names = sorted(p.name for p in (work / "out").iterdir())
    assert names == ["scene_a_abundance.png", "scene_a_abundance.tif", "scene_a_abundance.zarr",
                     "scene_a_abundance_rmse.tif", "scene_a_abundance_rmse.zarr"]
    rmse = float(next(ln for ln in r.stdout.splitlines() if ln.startswith("RMSE")).split()[1])
    assert rmse < 0.02


def test_earthlib_library_without_earthlib_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_earthlib(name, *a, **k):
        if name == "earthlib":
            raise ImportError("No module named 'earthlib'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_earthlib)
    from xr_unmix.library import load_library

    with pytest.raises(ImportError, match=r"pip install 'xr-unmix\[scenes\]'") as exc:
        load_library("earthlib")
    assert len(str(exc.value).splitlines()) == 1
