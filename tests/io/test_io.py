"""The writers: valid COGs, Zarr round trips with the CRS, atomic writes, overwrite, missing CRS."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

import xr_unmix
from xr_unmix.errors import MissingCRSError
from xr_unmix.io import open_abundance, open_cube, to_cog, to_zarr
from xr_unmix.testing import make_cube


@pytest.fixture
def abundance() -> tuple[xr.DataArray, xr.DataArray]:
    """(lazy abundance map 64x80 with one invalid pixel, the cube it came from)."""
    cube, E, _ = make_cube(64, 80, seed=3)
    cube = cube.copy()
    cube[:, 5, 7] = np.nan
    cube = cube.chunk({"y": 32, "x": 32})
    return xr_unmix.fcls(cube, E), cube


def _leftovers(d: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name not in keep)


def test_cog_is_valid_and_georeferenced(tmp_path: Path, abundance) -> None:
    ab, cube = abundance
    out = to_cog(ab, tmp_path / "a.tif", blocksize=16)
    expected = ab.compute()
    with rasterio.open(out) as src:
        assert src.driver == "GTiff"
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.profile["tiled"] and src.block_shapes[0] == (16, 16)
        assert src.overviews(1), "a COG of 64x80 px with 16 px tiles has overviews"
        assert src.count == ab.sizes["endmember"]
        assert list(src.descriptions) == [str(n) for n in ab.endmember.values]
        assert src.nodata is not None and np.isnan(src.nodata)
        assert src.dtypes[0] == "float32"
        assert src.crs == cube.rio.crs
        assert src.transform.almost_equals(cube.rio.transform())
        data = src.read()
    np.testing.assert_array_equal(np.isnan(data), np.isnan(expected.values))
    assert np.isnan(data[:, 5, 7]).all()
    np.testing.assert_allclose(data, expected.values, rtol=0, atol=1e-7)
    assert _leftovers(tmp_path, {"a.tif"}) == []


def test_zarr_round_trip_keeps_crs_and_values(tmp_path: Path, abundance) -> None:
    ab, cube = abundance
    store = to_zarr(ab, tmp_path / "a.zarr")
    ds = xr.open_zarr(store, decode_coords="all")
    back = ds["abundance"]
    assert back.rio.crs == cube.rio.crs
    assert back.rio.transform().almost_equals(cube.rio.transform())
    assert list(back.endmember.values) == list(ab.endmember.values)
    np.testing.assert_allclose(back.values, ab.values, rtol=0, atol=0, equal_nan=True)
    assert open_abundance(store).rio.crs == cube.rio.crs
    assert _leftovers(tmp_path, {"a.zarr"}) == []


def _boom(block: np.ndarray, block_info=None) -> np.ndarray:
    if block_info is not None and block_info[None]["chunk-location"][1:] == (1, 1):
        raise RuntimeError("boom in the middle of the write")
    return block


def _failing(ab: xr.DataArray) -> xr.DataArray:
    return ab.copy(data=ab.data.map_blocks(_boom, dtype=ab.dtype))


@pytest.mark.parametrize("fmt", ["tif", "zarr"])
def test_failure_mid_write_leaves_nothing(tmp_path: Path, abundance, fmt: str) -> None:
    ab, _ = abundance
    writer = to_cog if fmt == "tif" else to_zarr
    target = tmp_path / f"a.{fmt}"
    with pytest.raises(RuntimeError, match="boom"):
        writer(_failing(ab), target)
    assert not target.exists()
    assert _leftovers(tmp_path, set()) == []


@pytest.mark.parametrize("fmt", ["tif", "zarr"])
def test_overwrite_semantics(tmp_path: Path, abundance, fmt: str) -> None:
    ab, _ = abundance
    writer = to_cog if fmt == "tif" else to_zarr
    target = tmp_path / f"a.{fmt}"
    writer(ab, target)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        writer(ab, target)
    # a failed overwrite keeps the old, complete output
    with pytest.raises(RuntimeError, match="boom"):
        writer(_failing(ab * 0 + 0.5), target, overwrite=True)
    old = open_cube(target).values if fmt == "tif" else open_abundance(target).values
    np.testing.assert_allclose(old, ab.values, equal_nan=True)
    # a successful one replaces it
    writer(ab * 0 + 0.25, target, overwrite=True)
    new = open_cube(target).values if fmt == "tif" else open_abundance(target).values
    assert np.nanmax(np.abs(new - 0.25)) == 0
    assert _leftovers(tmp_path, {target.name}) == []


@pytest.mark.parametrize("fmt", ["tif", "zarr"])
def test_missing_crs_warns_or_raises(tmp_path: Path, fmt: str) -> None:
    cube, E, _ = make_cube(16, 16, crs=None)
    ab = xr_unmix.fcls(cube, E)
    assert ab.rio.crs is None
    writer = to_cog if fmt == "tif" else to_zarr
    with pytest.raises(MissingCRSError, match="no CRS"):
        writer(ab, tmp_path / f"r.{fmt}", require_crs=True)
    assert not (tmp_path / f"r.{fmt}").exists()
    with pytest.warns(UserWarning, match="without a CRS"):
        writer(ab, tmp_path / f"w.{fmt}")
    assert (tmp_path / f"w.{fmt}").exists()


def test_in_memory_abundance_and_single_layer(tmp_path: Path) -> None:
    cube, E, _ = make_cube(20, 24)
    ab = xr_unmix.fcls(cube, E)  # numpy-backed
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        to_cog(ab, tmp_path / "a.tif", blocksize=16)
        to_zarr(ab.isel(endmember=0, drop=True).rename("m0"), tmp_path / "l.zarr")
    with rasterio.open(tmp_path / "a.tif") as src:
        np.testing.assert_allclose(src.read(), ab.values, atol=1e-7)
    assert open_abundance(tmp_path / "l.zarr").dims == ("y", "x")


def test_open_cube_names_a_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00" + b"\x00garbage" * 20)
    with pytest.raises(OSError, match="bad.tif"):
        open_cube(bad)


def test_open_cube_masks_nodata(tmp_path: Path) -> None:
    cube, _, _ = make_cube(16, 16)
    ints = (cube * 1000).astype("int16")
    ints[:, 2, 3] = -9999
    ints.rio.write_nodata(-9999, encoded=False, inplace=True)
    ints.rio.to_raster(tmp_path / "i.tif")
    got = open_cube(tmp_path / "i.tif", chunks=8)
    assert got.dtype.kind == "f" and np.isnan(got.values[:, 2, 3]).all()
    assert np.isfinite(got.values).sum() == got.size - got.sizes["band"]
    floats = cube.copy()
    floats[:, 4, 5] = np.nan
    floats.rio.write_nodata(np.nan, encoded=False, inplace=True)
    floats.rio.to_raster(tmp_path / "f.tif")
    got = open_cube(tmp_path / "f.tif", chunks=8)  # fast path: nothing to mask
    assert np.isnan(got.values[:, 4, 5]).all() and np.isnan(got.rio.nodata)
    assert "_FillValue" not in got.attrs
    np.testing.assert_array_equal(got.values, floats.values)


def test_auto_chunks_bound_the_chunk_bytes(tmp_path: Path) -> None:
    from xr_unmix.io import auto_chunk

    assert auto_chunk(200) == 256 and auto_chunk(60) == 512 and auto_chunk(285) == 192
    assert auto_chunk(100_000) == 64
    cube, _, _ = make_cube(300, 40)
    cube.rio.to_raster(tmp_path / "c.tif")
    got = open_cube(tmp_path / "c.tif", chunks="auto")  # 30 bands: 1024 px > the image
    assert got.chunks is not None and got.chunks[1] == (300,) and got.chunks[0] == (30,)
    with pytest.raises(ValueError, match="auto"):
        open_cube(tmp_path / "c.tif", chunks="big")


def test_cog_overviews_are_2x2_averages_and_level_is_settable(tmp_path: Path) -> None:
    """Overviews (built in the scratch file) at the COG driver's levels, each a NaN-aware 2x2 mean."""
    import dask.array as da

    rng = np.random.default_rng(0)
    a = rng.random((2, 128, 96)).astype(np.float32)
    a[:, rng.random((128, 96)) < 0.1] = np.nan
    a[:, :4, :4] = np.nan
    arr = xr.DataArray(da.from_array(a, chunks=(2, 32, 32)), dims=("endmember", "y", "x"),
                       coords={"endmember": ["a", "b"], "y": 4e6 - 30.0 * np.arange(128),
                               "x": 5e5 + 30.0 * np.arange(96)}).rio.write_crs("EPSG:32633")
    out = to_cog(arr, tmp_path / "a.tif", blocksize=16)
    with rasterio.open(out) as src:
        assert src.overviews(1) == [2, 4, 8]  # halve until 128 px fit in a 16 px block
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        o = src.read(out_shape=(2, 64, 48))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN 2x2 cells
        ref = np.nanmean(a.reshape(2, 64, 2, 48, 2), axis=(2, 4))
    np.testing.assert_array_equal(np.isnan(o), np.isnan(ref))
    np.testing.assert_allclose(o, ref, atol=1e-6)
    for level in (1, 9):
        to_cog(arr, tmp_path / f"l{level}.tif", blocksize=16, level=level)
    with pytest.raises(ValueError, match="level"):
        to_cog(arr, tmp_path / "x.tif", compress="LZW", level=3)


def test_zarr_chunks_are_zstd_at_the_given_level(tmp_path: Path, abundance) -> None:
    import zarr

    ab, _ = abundance
    for level in (1, 5):
        store = to_zarr(ab, tmp_path / f"l{level}.zarr", level=level)
        comp = zarr.open_array(store / "abundance", mode="r").compressors
        assert len(comp) == 1 and type(comp[0]).__name__ == "ZstdCodec" and comp[0].level == level
        np.testing.assert_array_equal(open_abundance(store).values, ab.values)


def test_writers_run_with_a_real_gdal_block_cache(tmp_path: Path, abundance,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # rasterio.Env(GDAL_CACHEMAX=64) is a 64-*byte* cache (lazy to_cog 35x its compute()): the value
    # in force while the tiles are computed and while the COG copy runs must be 64 MiB
    import rasterio.env
    import rasterio.shutil

    from xr_unmix import io as xio

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    seen: dict[str, list] = {"compute": [], "copy": []}

    def record(block: np.ndarray) -> np.ndarray:
        if block.size:  # not dask's probe for the output type
            seen["compute"].append(rasterio.env.get_gdal_config("GDAL_CACHEMAX"))
        return block

    real_copy = rasterio.shutil.copy

    def copy(*args, **kwargs):
        seen["copy"].append((rasterio.env.get_gdal_config("GDAL_CACHEMAX"),
                             rasterio.env.get_gdal_config("GDAL_NUM_THREADS")))
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(rasterio.shutil, "copy", copy)
    ab, _ = abundance
    to_cog(ab.copy(data=ab.data.map_blocks(record, dtype=ab.dtype)), tmp_path / "a.tif",
           blocksize=16)
    to_zarr(ab.copy(data=ab.data.map_blocks(record, dtype=ab.dtype)), tmp_path / "a.zarr")
    assert xio.gdal_cache_bytes() == 64 * 2**20
    assert seen["compute"] and set(seen["compute"]) == {64 * 2**20}
    assert seen["copy"] == [(64 * 2**20, "ALL_CPUS")]
    # a GDAL_CACHEMAX environment variable (GDAL reads "64" there as MB) is left to GDAL
    monkeypatch.setenv("GDAL_CACHEMAX", "32")
    assert "GDAL_CACHEMAX" not in xio.gdal_options()


def test_cog_writer_passes_only_options_gdal_knows(tmp_path: Path, caplog) -> None:
    # GDAL ignores a creation option it does not know, with a CPLE_NotSupported warning only
    import logging

    cube, E, _ = make_cube(200, 300, seed=1)
    ab = xr_unmix.fcls(cube.chunk({"y": 128, "x": 128}), E)
    with caplog.at_level(logging.WARNING, logger="rasterio"):
        for codec in ("DEFLATE", "ZSTD", "LZW", "NONE"):
            to_cog(ab, tmp_path / f"{codec}.tif", compress=codec, blocksize=128)
    complaints = [r.getMessage() for r in caplog.records if "CPLE_" in r.getMessage()]
    assert complaints == []
    with rasterio.open(tmp_path / "ZSTD.tif") as src:
        ims = src.tags(ns="IMAGE_STRUCTURE")
        assert (ims["COMPRESSION"], ims["PREDICTOR"], ims["LAYOUT"]) == ("ZSTD", "3", "COG")
        assert src.overviews(1) == [2, 4]  # halved until one 128 px block holds it


def _tif_with_tags(path: Path, n: int = 4, **tags: str) -> Path:
    cube, _, _ = make_cube(8, 8)
    cube = cube.isel(band=slice(0, n)).drop_vars([c for c in cube.coords if c not in ("y", "x", "spatial_ref")])
    cube = cube.assign_coords(band=np.arange(1, n + 1))
    cube.rio.to_raster(path)
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(**tags)
        for b in range(1, n + 1):
            dst.set_band_description(b, f"Band {b}")
    return path


@pytest.mark.parametrize(("tag", "units", "expected"), [
    ("{450, 550, 650, 750}", None, [450.0, 550.0, 650.0, 750.0]),      # ENVI-style list, nm
    ("0.45,0.55,0.65,0.75", None, [450.0, 550.0, 650.0, 750.0]),       # bare values < 30: micrometres
    ("0.45 0.55 0.65 0.75", "Micrometers", [450.0, 550.0, 650.0, 750.0]),
    ("1 2 3 4", "Index", None),                                        # band numbers, not wavelengths
])
def test_wavelengths_from_dataset_tags(tmp_path: Path, tag: str, units: str | None, expected) -> None:
    from xr_unmix.io import read_wavelengths

    tags = {"wavelength": tag} | ({"wavelength_units": units} if units else {})
    path = _tif_with_tags(tmp_path / "w.tif", **tags)
    got = read_wavelengths(path)
    if expected is None:
        assert got is None
    else:
        np.testing.assert_allclose(got, expected)
        np.testing.assert_allclose(open_cube(path).wavelength.values, expected)
