"""The command line: run (COG, Zarr, quality layer, errors) and demo wiring."""

import numpy as np
import pytest
import rasterio
import xarray as xr
from click.testing import CliRunner

from xr_unmix.cli import main
from xr_unmix.endmembers import write_endmembers
from xr_unmix.io import open_abundance, open_cube
from xr_unmix.testing import make_cube, write_cube_tif


@pytest.fixture
def files(tmp_path):
    cube, E, truth = make_cube(40, 48)
    scene = write_cube_tif(cube, tmp_path / "scene.tif")
    em = write_endmembers(E, tmp_path / "em.csv")
    return tmp_path, scene, em, cube, E, truth


def test_open_cube_reads_wavelengths(files):
    _, scene, _, cube, _, _ = files
    c = open_cube(scene, chunks=16)
    np.testing.assert_allclose(c.wavelength.values, cube.wavelength.values, atol=1e-3)
    assert c.chunks is not None and c.rio.crs == cube.rio.crs


def test_run_to_cog_and_zarr(files):
    tmp, scene, em, cube, _, truth = files
    r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", str(em), "--method", "fcls",
                                  "--out", str(tmp / "ab.tif"), "--chunk", "16", "--quality"])
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp / "ab.tif") as src:
        assert src.count == 3 and src.descriptions == ("m0", "m1", "m2")
        assert src.crs == cube.rio.crs
        ab = src.read()
    np.testing.assert_allclose(ab, truth.values, atol=2e-2)
    assert (tmp / "ab_rmse.tif").exists()
    r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", str(em), "--method", "sunsal",
                                  "--lam", "0.001", "--out", str(tmp / "ab.zarr")])
    assert r.exit_code == 0, r.output
    z = open_abundance(tmp / "ab.zarr")
    assert z.rio.crs == cube.rio.crs and z.attrs["lam"] == 0.001


def test_run_errors(files, tmp_path):
    tmp, scene, em, _, E, _ = files
    # band mismatch: suggests --resample when both have wavelengths
    fewer = write_endmembers(E.isel(band=slice(0, 20)), tmp / "fewer.csv")
    r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", str(fewer), "--out",
                                  str(tmp / "x.tif")])
    assert r.exit_code != 0 and "20 bands but the cube has 30" in r.output
    assert not (tmp / "x.tif").exists()
    r = CliRunner().invoke(main, ["run", str(scene), "--method", "admm", "--out", str(tmp / "y.tif")])
    assert r.exit_code != 0 and "needs --model" in r.output
    r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", str(em), "--out",
                                  str(tmp / "y.png")])
    assert r.exit_code != 0 and ".tif" in r.output
    # existing output is not replaced without --overwrite
    (tmp / "exists.tif").write_bytes(b"keep")
    r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", str(em), "--out",
                                  str(tmp / "exists.tif")])
    assert r.exit_code != 0 and (tmp / "exists.tif").read_bytes() == b"keep"


def test_run_resample(files):
    tmp, scene, _, cube, E, truth = files
    from xr_unmix import resample_spectra

    fine = write_endmembers(resample_spectra(E, np.linspace(400, 2400, 120)), tmp / "fine.csv")
    r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", str(fine), "--resample",
                                  "--out", str(tmp / "r.tif")])
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp / "r.tif") as src:
        np.testing.assert_allclose(src.read(), truth.values, atol=3e-2)


def test_version():
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and "xr-unmix" in r.output


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_non_georeferenced_scene_warns_but_writes(tmp_path):
    cube, E, _ = make_cube(16, 16, crs=None)
    bare = xr.DataArray(cube.values, dims=cube.dims, coords={"wavelength": ("band", cube.wavelength.values)})
    scene = write_cube_tif(bare, tmp_path / "bare.tif")
    em = write_endmembers(E, tmp_path / "em.csv")
    with pytest.warns(UserWarning, match="without a CRS"):
        r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", str(em), "--out",
                                      str(tmp_path / "o.tif")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
