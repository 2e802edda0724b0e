"""Readers of sensor products (ENVI, EMIT L2A, EnMAP L2A) against fixtures laid out as the products are,
the bad-band / ignore-window choice, and cubes whose dims are named otherwise."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import xr_unmix as xu
from xr_unmix.errors import DimensionError, InputError, ParameterError, WavelengthMismatchError
from xr_unmix.io.bands import DEFAULT_IGNORE_REGIONS, in_windows

sys.path.insert(0, str(Path(__file__).parent))
import make_product_fixtures as fx

pytest.importorskip("h5netcdf")
REPO = Path(__file__).resolve().parents[2]


def _outside_windows(wl):
    return ~in_windows(wl, DEFAULT_IGNORE_REGIONS)


# -- ENVI ---------------------------------------------------------------------------------------------

@pytest.fixture
def envi(tmp_path):
    return fx.write_envi(tmp_path)


def test_envi_ready_cube(envi):
    cube = xu.open_cube(envi["path"])
    keep = envi["bbl"] & _outside_windows(envi["wavelength"])
    assert cube.dims == ("band", "y", "x")
    np.testing.assert_allclose(cube.wavelength.values, envi["wavelength"][keep], atol=0.01)  # um -> nm
    np.testing.assert_allclose(cube.fwhm.values, 10.0)
    assert cube.good_band.values.all()
    assert cube.attrs["bad_bands"] == "drop" and cube.attrs["bands_dropped"] == int((~keep).sum())
    assert cube.attrs["good_band_source"] == "ENVI bbl"
    assert list(cube.band.values) == list(np.flatnonzero(keep) + 1)  # the file's band numbers
    assert cube.rio.crs.to_epsg() == envi["epsg"]
    assert tuple(cube.rio.transform())[:6] == envi["transform"]
    vals = cube.values
    assert np.isnan(vals[:, 0, 0]).all()  # data ignore value
    assert 0.0 < np.nanmin(vals) and np.nanmax(vals) < 1.0  # reflectance scale factor divided out


def test_envi_unmixes_with_bad_bands_excluded(envi):
    cube = xu.open_cube(envi["path"])
    ab = cube.unmix.fcls(fx.endmembers(cube))
    assert ab.rio.crs.to_epsg() == envi["epsg"]
    assert tuple(ab.rio.transform())[:6] == envi["transform"]
    A = envi["abundance"]
    assert np.isnan(ab.values[:, 0, 0]).all()
    np.testing.assert_allclose(ab.values[:, 1:, 1:], A[:, 1:, 1:], atol=2e-3)
    # the same file with its bad bands kept: their junk (3.1 in reflectance) spoils the fit
    kept = xu.open_cube(envi["path"], bad_bands="keep", ignore_regions=None)
    assert kept.sizes["band"] == 40 and (~kept.good_band.values).sum() == 3
    bad = kept.unmix.fcls(fx.endmembers(kept)).values
    assert np.nanmax(np.abs(bad[:, 1:, 1:] - A[:, 1:, 1:])) > 0.05


def test_envi_header_path_and_keep(envi):
    cube = xu.open_cube(envi["path"].with_suffix(".hdr"), bad_bands="keep")
    assert cube.sizes["band"] == 40
    expect = envi["bbl"] & _outside_windows(envi["wavelength"])
    np.testing.assert_array_equal(cube.good_band.values, expect)
    assert cube.attrs["bands_dropped"] == 0
    np.testing.assert_array_equal(cube.sel(band=cube.good_band).band,
                                  xu.open_cube(envi["path"]).band)


def test_envi_rotated_grid_keeps_the_files_affine(tmp_path):
    """AVIRIS-style rotated grid: the affine comes from the file, never rebuilt from 1-D x/y."""
    import rasterio

    info = fx.write_envi(tmp_path, rotation=20.0)
    with rasterio.open(info["path"]) as src:
        affine = src.transform
    assert affine.b != 0  # rotated
    ab = xu.open_cube(info["path"]).unmix.fcls(fx.endmembers(xu.open_cube(info["path"])))
    assert tuple(ab.rio.transform()) == pytest.approx(tuple(affine))


# -- EMIT ---------------------------------------------------------------------------------------------

@pytest.fixture
def emit(tmp_path):
    return fx.write_emit(tmp_path)


def test_emit_ortho_georeferenced_and_lazy(emit):
    cube = xu.open_cube(emit["path"], chunks=4)
    assert cube.chunks is not None and cube.dims == ("band", "y", "x")
    assert cube.rio.crs.to_epsg() == 4326
    gt = emit["geotransform"]
    assert tuple(cube.rio.transform())[:6] == pytest.approx((gt[1], gt[2], gt[0], gt[4], gt[5], gt[3]))
    assert cube.sizes["y"] == emit["glt_x"].shape[0] and cube.sizes["x"] == emit["glt_x"].shape[1]
    keep = emit["good"] & _outside_windows(emit["wavelength"])
    np.testing.assert_allclose(cube.wavelength.values, emit["wavelength"][keep], rtol=1e-6)
    assert cube.attrs["bands_dropped"] == int((~keep).sum())
    vals = cube.values
    none = emit["glt_x"] == 0
    assert np.isnan(vals[:, none]).all()  # GLT 0: no swath pixel
    assert np.isfinite(vals[:, ~none]).sum() > 0


def test_emit_ortho_pixel_is_the_swath_pixel_its_glt_names(emit):
    ortho = xu.open_cube(emit["path"], bad_bands="keep", ignore_regions=None, chunks=3).values
    swath = xu.open_cube(emit["path"], ortho=False, bad_bands="keep", ignore_regions=None).values
    gx, gy = emit["glt_x"], emit["glt_y"]
    checked = 0
    for i, j in zip(*np.nonzero(gx)):
        np.testing.assert_array_equal(ortho[:, i, j], swath[:, gy[i, j] - 1, gx[i, j] - 1])
        checked += 1
    assert checked == gx.size - 3


def test_emit_fill_and_bad_bands(emit):
    swath = xu.open_cube(emit["path"], ortho=False, bad_bands="keep", ignore_regions=None)
    good = swath.good_band.values
    assert good.size == 285 and (~good).sum() == 41
    vals = swath.values
    assert np.isnan(vals[:, 1, 2]).all()  # _FillValue -9999
    np.testing.assert_allclose(vals[~good][:, 0, 0], -0.01)  # EMIT's bad-band sentinel, kept
    dropped = xu.open_cube(emit["path"], ortho=False, ignore_regions=None)
    assert dropped.sizes["band"] == 244 and dropped.attrs["bands_dropped"] == 41
    assert (dropped.values[:, 0, 0] > 0).all()


def test_emit_unmixes(emit):
    cube = xu.open_cube(emit["path"])
    ab = cube.unmix.fcls(fx.endmembers(cube))
    assert ab.rio.crs.to_epsg() == 4326
    assert tuple(ab.rio.transform()) == tuple(cube.rio.transform())
    A, ok = emit["abundance"], emit["glt_x"] > 0
    ok[9 - 2, 1] = False  # the ortho pixel filled by the swath's fill-value pixel (1, 2)
    got = ab.values
    np.testing.assert_allclose(got[:, ok], A[:, ok], atol=1e-4)
    assert np.isnan(got[:, ~ok]).all()


def test_emit_swath_has_lat_lon(emit):
    swath = xu.open_cube(emit["path"], ortho=False)
    assert swath.rio.crs is None and swath.lat.dims == ("y", "x")
    ab = swath.unmix.fcls(fx.endmembers(swath))
    assert "lat" in ab.coords and "lon" in ab.coords
    np.testing.assert_allclose(ab.values[:, 0, 0], emit["abundance"][:, 9, 0], atol=1e-4)


def test_emit_without_glt_is_a_clear_error(tmp_path):
    info = fx.write_emit(tmp_path, glt=False)
    with pytest.raises(InputError, match=r"(?s)EMIT_L2A_RFL.*glt_x.*ortho=False"):
        xu.open_cube(info["path"])
    assert xu.open_cube(info["path"], ortho=False).sizes["y"] == 8


# -- EnMAP --------------------------------------------------------------------------------------------

@pytest.fixture
def enmap(tmp_path):
    return fx.write_enmap(tmp_path)


def test_enmap_ready_cube(enmap):
    cube = xu.open_cube(enmap["path"], bad_bands="keep", ignore_regions=None)
    np.testing.assert_allclose(cube.wavelength.values, enmap["wavelength"], atol=0.01)
    assert (np.diff(cube.wavelength.values) < 0).any()  # VNIR/SWIR overlap: file order kept
    np.testing.assert_array_equal(np.flatnonzero(~cube.good_band.values), enmap["bad"])
    assert cube.rio.crs.to_epsg() == enmap["epsg"]
    assert tuple(cube.rio.transform())[:6] == enmap["transform"]
    vals = cube.values
    assert cube.dtype == np.float32 and np.isnan(vals[:, 2, 3]).all()  # no-data -32768
    assert 0.0 < np.nanmin(vals) and np.nanmax(vals) < 1.0  # gain 1e-4 decoded


def test_enmap_unmixes_from_xml_path(enmap):
    xml = Path(str(enmap["path"]).replace("-SPECTRAL_IMAGE.TIF", "-METADATA.XML"))
    cube = xu.open_cube(xml)
    assert not set(enmap["bad"]) & set(cube.band.values - 1)
    ab = cube.unmix.fcls(fx.endmembers(cube))
    assert ab.rio.crs.to_epsg() == enmap["epsg"]
    A = enmap["abundance"]
    assert np.isnan(ab.values[:, 2, 3]).all()
    mask = np.ones(A.shape[1:], bool)
    mask[2, 3] = False
    np.testing.assert_allclose(ab.values[:, mask], A[:, mask], atol=1e-3)


def test_enmap_xml_band_count_mismatch(tmp_path):
    info = fx.write_enmap(tmp_path, xml_bands=200)
    with pytest.raises(InputError, match="200 bands.*has 224"):
        xu.open_cube(info["path"])


# -- GeoTIFF and the parameters -----------------------------------------------------------------------

def test_geotiff_keeps_its_bands_by_default():
    scene = REPO / "sample_scenes" / "scene_a.tif"
    cube = xu.open_cube(scene)
    assert cube.sizes["band"] == 117 and cube.good_band.values.all()
    assert cube.attrs["bands_dropped"] == 0 and cube.attrs["ignore_regions_nm"] == "[]"
    cut = xu.open_cube(scene, ignore_regions="default")
    assert cut.sizes["band"] == int(_outside_windows(cube.wavelength.values).sum()) < 117
    one = xu.open_cube(scene, ignore_regions=[1300, 1500])  # a flat list, as SpectralUnmixing takes it
    assert not ((one.wavelength > 1300) & (one.wavelength < 1500)).any()


@pytest.mark.parametrize("kw", [{"bad_bands": "nan"}, {"ignore_regions": [1300, 1400, 1500]},
                                {"ignore_regions": [(1400, 1300)]}, {"ignore_regions": "water"}])
def test_bad_parameters(envi, kw):
    with pytest.raises(ParameterError):
        xu.open_cube(envi["path"], **kw)


# -- dims named otherwise -----------------------------------------------------------------------------

@pytest.fixture
def renamed(scene):
    cube, E, _ = scene
    other = cube.assign_coords(band=cube.wavelength.values).drop_vars("wavelength")
    other = other.rename(band="wavelength", y="lat", x="lon")
    return cube, other, E


def test_other_dim_names_fail_with_the_exact_rename(renamed):
    cube, other, E = renamed
    with pytest.raises(DimensionError) as err:
        other.unmix.fcls(E)
    msg = str(err.value)
    fix = "cube.swap_dims({'wavelength': 'band'}).rename({'lat': 'y', 'lon': 'x'})"
    assert fix in msg and msg.count("expected") == 1
    fixed = eval(fix, {"cube": other})  # the call the message shows works as written
    assert "wavelength" in fixed.coords
    xr.testing.assert_allclose(fixed.unmix.fcls(E), cube.unmix.fcls(E))
    with pytest.raises(DimensionError, match="swap_dims"):  # every estimator says the same
        other.unmix.nnls(E)


def test_dims_mapping_through_the_accessor(renamed):
    cube, other, E = renamed
    ref = cube.unmix.fcls(E)
    for dims in ({"band": "wavelength", "y": "lat", "x": "lon"},
                 {"wavelength": "band", "lat": "y", "lon": "x"}):
        got = other.unmix.fcls(E, dims=dims)
        assert got.dims == ("endmember", "lat", "lon")  # the input's names come back
        xr.testing.assert_allclose(got.rename(lat="y", lon="x"), ref)
        assert got.rio.crs == ref.rio.crs and got.rio.transform() == ref.rio.transform()
    conformed = xu.conform_cube(other, {"band": "wavelength", "y": "lat", "x": "lon"})
    np.testing.assert_allclose(conformed.wavelength.values, cube.wavelength.values)


def test_swath_with_other_names_comes_back_with_them(tmp_path):
    """An EMIT swath read as plain NetCDF: (downtrack, crosstrack, bands) with 2-D lat/lon and the
    wavelengths as a coordinate. Through dims= it unmixes, the wavelength coordinate survives the
    mapping (it is checked against the endmembers'), and the result is on (downtrack, crosstrack)
    with lat/lon; the writers take it as it is."""
    info = fx.write_emit(tmp_path)
    ds = xr.open_dataset(info["path"], engine="h5netcdf")
    sbp = xr.open_dataset(info["path"], engine="h5netcdf", group="sensor_band_parameters")
    loc = xr.open_dataset(info["path"], engine="h5netcdf", group="location")
    good = sbp["good_wavelengths"].values == 1
    raw = ds["reflectance"].assign_coords(wavelengths=("bands", sbp["wavelengths"].values),
                                          lat=loc["lat"], lon=loc["lon"]).isel(bands=good)
    dims = {"band": "bands", "y": "downtrack", "x": "crosstrack"}
    E = fx.endmembers(raw.rename(wavelengths="wavelength"))
    conformed = xu.conform_cube(raw, dims)
    np.testing.assert_allclose(conformed.wavelength.values, sbp["wavelengths"].values[good])
    ab = raw.unmix.fcls(E, dims=dims)
    assert ab.dims == ("endmember", "downtrack", "crosstrack")
    assert ab.lat.dims == ("downtrack", "crosstrack")
    np.testing.assert_array_equal(ab.lat.values, loc["lat"].values)
    A = info["abundance"]
    np.testing.assert_allclose(ab.values[:, 0, 9], A[:, 0, 0], atol=1e-4)  # swath (0, 9) = ortho (0, 0)
    bad = E.assign_coords(wavelength=("band", raw.wavelengths.values + 300))
    with pytest.raises(WavelengthMismatchError):  # the coordinate is there, and checked
        raw.unmix.fcls(bad, dims=dims)
    with pytest.warns(UserWarning, match="without a CRS"):  # a swath has none
        back = xu.open_abundance(xu.to_zarr(ab, tmp_path / "ab.zarr"))
    assert back.dims == ("endmember", "y", "x")


def test_band_last_cube(scene):
    cube, E, _ = scene
    ref = cube.unmix.fcls(E)
    xr.testing.assert_allclose(cube.transpose("y", "x", "band").unmix.fcls(E), ref)
    # hyperproc's layout: a Dataset variable on (y, x, wavelength), wavelengths in um
    hp = xr.Dataset({"reflectance": cube.transpose("y", "x", "band")
                     .assign_coords(band=cube.wavelength.values / 1000.0).drop_vars("wavelength")
                     .rename(band="wavelength")})
    hp["wavelength"].attrs["units"] = "micrometers"
    got = hp["reflectance"].unmix.fcls(E, dims={"band": "wavelength"})
    xr.testing.assert_allclose(got, ref)
    with pytest.raises(Exception, match=r"ds\['reflectance'\]"):
        xu.conform_cube(hp)


def test_dims_errors(renamed):
    _, other, E = renamed
    with pytest.raises(DimensionError, match="must map"):
        other.unmix.fcls(E, dims={"band": "nope"})
    odd = other.rename(wavelength="a", lat="b", lon="c")
    with pytest.raises(DimensionError, match="conform_cube"):
        odd.unmix.fcls(E)
    assert odd.unmix.fcls(E, dims={"band": "a", "y": "b", "x": "c"}).sizes["endmember"] == 3


def test_guide_section_runs_as_written(tmp_path, monkeypatch):
    """The code of the guide's "Reading sensor products" section, from a folder laid out as the
    repository (fixtures written by the script the guide names)."""
    import re

    guide = (REPO / "docs" / "user_guide.md").read_text()
    section = guide[guide.index("## Reading sensor products"):guide.index("## The accessor")]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))
    assert "open_cube" in code and "dims=" in code
    (tmp_path / "fixtures").mkdir()
    for fn in fx.WRITERS:
        fn(tmp_path / "fixtures")
    (tmp_path / "sample_scenes").symlink_to(REPO / "sample_scenes")
    (tmp_path / "tests").symlink_to(REPO / "tests")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(compile(code, "user_guide.md", "exec"), {})
