"""Written products that other tools read: GDAL-readable Zarr with CF metadata, COG metadata, provenance."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401
import xarray as xr
from rasterio.transform import from_origin

import xr_unmix
from xr_unmix.errors import ParameterError


@pytest.fixture
def result():
    rng = np.random.default_rng(0)
    cube = xr.DataArray(rng.random((6, 40, 50)).astype("float32"), dims=("band", "y", "x"),
                        coords={"y": 100 - np.arange(40) * 2 - 1.0, "x": 500 + np.arange(50) * 2 + 1.0,
                                "wavelength": ("band", np.linspace(400, 900, 6))})
    cube = cube.rio.write_crs("EPSG:32633").chunk({"y": 20, "x": 25})
    E = xr.DataArray(rng.random((6, 3)), dims=("band", "endmember"),
                     coords={"endmember": ["soil", "veg", "water"]})
    return cube.unmix.fcls(E)


def test_zarr_v2_gdal_and_xarray_agree(result, tmp_path):
    store = xr_unmix.to_zarr(result, tmp_path / "ab.zarr", zarr_format=2)
    with rasterio.open(f'ZARR:"{store}":/abundance') as src:
        gdal_crs, gdal_t, gdal_v = src.crs, src.transform, src.read()
    ds = xr.open_zarr(store, decode_coords="all")
    ab = ds["abundance"]
    assert ab.encoding.get("grid_mapping") == "spatial_ref"
    assert ab.rio.crs == gdal_crs == rasterio.crs.CRS.from_epsg(32633)
    assert ab.rio.transform() == gdal_t == from_origin(500, 100, 2, 2)
    np.testing.assert_array_equal(ab.values, gdal_v)
    np.testing.assert_allclose(gdal_v, result.values, rtol=0, atol=0)
    assert ds.x.attrs["standard_name"] == "projection_x_coordinate"
    assert ds.y.attrs["units"] == "metre"


def test_zarr_v3_cf_and_provenance(result, tmp_path):
    store = xr_unmix.to_zarr(result, tmp_path / "ab.zarr")
    ab = xr.open_zarr(store, decode_coords="all")["abundance"]
    assert ab.rio.crs.to_epsg() == 32633
    assert ab.attrs["units"] == "1" and ab.attrs["long_name"] == "abundance"
    assert ab.attrs["method"] == "fcls"
    assert ab.attrs["endmembers"] == ["soil", "veg", "water"]
    assert ab.attrs["input_wavelengths_nm"] == [400.0, 500.0, 600.0, 700.0, 800.0, 900.0]
    assert ab.attrs["software"] == f"xr_unmix {xr_unmix.__version__}"
    assert ab.attrs["date_created"].endswith("Z")


def test_cog_metadata(result, tmp_path):
    path = xr_unmix.to_cog(result, tmp_path / "ab.tif")
    with rasterio.open(path) as src:
        assert src.units == ("1", "1", "1")
        assert src.descriptions == ("soil", "veg", "water")
        assert src.tags(2)["endmember"] == "veg"
        tags = src.tags()
    assert tags["method"] == "fcls"
    assert tags["input_bands"] == "6"
    assert [float(v) for v in tags["input_wavelengths_nm"].split(",")] == [
        400.0, 500.0, 600.0, 700.0, 800.0, 900.0]
    assert tags["software"].startswith("xr_unmix ")


def test_cog_source_recorded(tmp_path):
    rng = np.random.default_rng(1)
    cube = xr.DataArray(rng.random((4, 8, 8)).astype("float32"), dims=("band", "y", "x"),
                        coords={"y": np.arange(8.0)[::-1], "x": np.arange(8.0)})
    cube = cube.rio.write_crs("EPSG:32633")
    cube.rio.to_raster(tmp_path / "scene.tif")
    ab = xr_unmix.open_cube(tmp_path / "scene.tif").unmix.fcls(rng.random((4, 2)))
    out = xr_unmix.to_cog(ab, tmp_path / "ab.tif")
    with rasterio.open(out) as src:
        assert src.tags()["input_source"].endswith("scene.tif")


def test_south_up_written_north_up(result, tmp_path):
    south = result.isel(y=slice(None, None, -1))
    south = south.rio.write_transform(from_origin(500, 100 - 80, 2, -2))
    assert south.y.values[1] > south.y.values[0]
    path = xr_unmix.to_cog(south, tmp_path / "s.tif")
    with rasterio.open(path) as src:
        assert src.transform == from_origin(500, 100, 2, 2)
        np.testing.assert_array_equal(src.read(1), result.isel(endmember=0).values)


@pytest.mark.parametrize("fn,name", [(xr_unmix.to_cog, "x.zarr"), (xr_unmix.to_zarr, "x.tif"),
                                     (xr_unmix.to_cog, "x.nc")])
def test_suffix_mismatch_refused(result, tmp_path, fn, name):
    with pytest.raises(ParameterError, match="path ending in"):
        fn(result, tmp_path / name)
    assert not (tmp_path / name).exists()


def _counted_result(calls):
    """A lazy (endmember, y, x) result whose every block evaluation is counted."""
    import dask.array as da

    def block(b):
        if b.size:  # not dask's meta probe
            calls.append(1)
        return np.clip(b[:2] / b[:2].sum(axis=0, keepdims=True), 0, 1)

    rng = np.random.default_rng(2)
    cube = xr.DataArray(rng.random((4, 32, 32)).astype("float32") + 0.1, dims=("band", "y", "x"),
                        coords={"y": np.arange(32.0)[::-1], "x": np.arange(32.0)})
    cube = cube.rio.write_crs("EPSG:32633").chunk({"band": -1, "y": 16, "x": 16})
    data = da.map_blocks(block, cube.data, chunks=((2,), (16, 16), (16, 16)), dtype=np.float32)
    ab = xr.DataArray(data, dims=("endmember", "y", "x"),
                      coords={"endmember": ["a", "b"], "y": cube.y, "x": cube.x}, name="abundance")
    return cube, ab.rio.write_crs("EPSG:32633")


def test_write_one_pass(tmp_path):
    calls: list[int] = []
    cube, ab = _counted_result(calls)
    E = np.ones((4, 2))
    paths = xr_unmix.write(ab, cog=tmp_path / "ab.tif", zarr=tmp_path / "ab.zarr", quality=cube,
                           endmembers=E)
    assert len(calls) == 4  # 4 blocks, each computed once for COG + Zarr + both RMSE layers
    # (the COG and the RMSE layers are made from the written Zarr store)
    assert [p.name for p in paths] == ["ab.tif", "ab.zarr", "ab_rmse.tif", "ab_rmse.zarr"]
    tif = xr_unmix.open_abundance(paths[0])
    zar = xr_unmix.open_abundance(paths[1])
    np.testing.assert_array_equal(tif.values, zar.values)
    rm = xr_unmix.open_abundance(paths[3]).values
    expect = xr_unmix.metrics.reconstruction_error(cube, E, ab.compute()).values
    np.testing.assert_allclose(rm, expect, rtol=1e-6)
    calls.clear()
    xr_unmix.to_cog(ab, tmp_path / "b.tif")
    xr_unmix.to_zarr(ab, tmp_path / "b.zarr")
    assert len(calls) == 8  # the two-call way computes twice: what write() avoids


def test_write_needs_paths_and_endmembers(tmp_path):
    _, ab = _counted_result([])
    with pytest.raises(ParameterError, match="cog= and/or zarr="):
        xr_unmix.write(ab)
    with pytest.raises(ParameterError, match="endmembers="):
        xr_unmix.write(ab, cog=tmp_path / "a.tif", quality=ab)
    assert not list(tmp_path.iterdir())


def test_dir_lists_lazy_names_and_library_loads():
    import subprocess
    import sys

    code = ("import xr_unmix; d = dir(xr_unmix); "
            "assert {'to_cog', 'to_zarr', 'write', 'open_cube', 'read_endmembers'} <= set(d), d; "
            "assert hasattr(xr_unmix.library, '__name__')")
    subprocess.run([sys.executable, "-c", code], check=True)
