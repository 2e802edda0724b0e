"""The sample scenes and ``make demo``'s code path, end to end."""

from __future__ import annotations

import numpy as np
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
