"""Scene paths as GDAL and fsspec spell them: accepted by the CLI, or refused in one line (exit 2)."""

from __future__ import annotations

import time
import zipfile

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from xr_unmix.cli import main
from xr_unmix.endmembers import write_endmembers
from xr_unmix.errors import InputError, MissingInputError
from xr_unmix.io import open_abundance
from xr_unmix.io.paths import check_raster_path, is_local_path
from xr_unmix.testing import make_cube, write_cube_tif


@pytest.fixture
def files(tmp_path):
    cube, E, truth = make_cube(24, 32)
    scene = write_cube_tif(cube, tmp_path / "scene.tif")
    return tmp_path, cube, scene, write_endmembers(E, tmp_path / "em.csv"), truth


def _run(scene, em, out):
    return CliRunner().invoke(main, ["run", scene, "--endmembers", str(em), "--out", str(out),
                                     "--chunk", "16"])


def test_kinds_of_path():
    assert is_local_path("scene.tif") and is_local_path("/data/a b.tif") and is_local_path("C:\\a.tif")
    for p in ('NETCDF:"f.nc":refl', "/vsicurl/https://h/a.tif", "s3://b/a.tif", "HDF5:f.h5://x",
              "/vsizip/a.zip/a.tif", "https://h/a.tif"):
        assert not is_local_path(p), p


def test_vsizip_scene_runs(files):
    tmp, _, scene, em, truth = files
    with zipfile.ZipFile(tmp / "scenes.zip", "w") as z:
        z.write(scene, "inner/scene.tif")
    r = _run(f"/vsizip/{tmp}/scenes.zip/inner/scene.tif", em, tmp / "ab.tif")
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(open_abundance(tmp / "ab.tif").values, truth.values, atol=2e-2)


def test_netcdf_subdataset_runs(files):
    tmp, cube, _, em, truth = files
    # a CF product as a converter writes it: grid_mapping, x/y with CF attributes
    ds = (cube.drop_vars("wavelength").rio.write_grid_mapping().rio.write_coordinate_system()
          .to_dataset(name="reflectance"))
    ds["other"] = ds.reflectance.isel(band=0, drop=True)  # two variables: a subdataset is needed
    ds.to_netcdf(tmp / "scene.nc", engine="h5netcdf")
    r = _run(f'NETCDF:"{tmp}/scene.nc":reflectance', em, tmp / "ab.zarr")
    assert r.exit_code == 0, r.output
    ab = open_abundance(tmp / "ab.zarr")
    assert ab.rio.crs == cube.rio.crs and ab.rio.transform() == cube.rio.transform()
    np.testing.assert_allclose(ab.values, truth.values, atol=2e-2)


@pytest.mark.parametrize("path", ['NETCDF:"{tmp}/missing.nc":reflectance',
                                  "/vsizip/{tmp}/missing.zip/a.tif",
                                  "/vsicurl/http://127.0.0.1:9/a.tif",
                                  "{tmp}/missing.tif"])
def test_unopenable_paths_fail_in_one_line(files, path):
    tmp, _, _, em, _ = files
    path = path.format(tmp=tmp)
    t0 = time.perf_counter()
    r = _run(path, em, tmp / "ab.tif")
    assert time.perf_counter() - t0 < 60
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and path in lines[0], r.output
    assert not (tmp / "ab.tif").exists()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_check_raster_path_errors(tmp_path):
    with pytest.raises(MissingInputError, match="folder"):
        check_raster_path(tmp_path)
    with pytest.raises(InputError, match="with GDAL"):
        check_raster_path("/vsimem/nothing_here.tif")
    with rasterio.MemoryFile() as mem:
        with mem.open(driver="GTiff", width=4, height=4, count=2, dtype="float32") as dst:
            dst.write(np.ones((2, 4, 4), "float32"))
        assert check_raster_path(mem.name) == mem.name


def test_data_folder_from_xr_unmix_data(tmp_path, monkeypatch):
    """Benchmark data are found through $XR_UNMIX_DATA; a missing file names the folder and the
    variable (issue 15, point 7)."""
    from xr_unmix import datasets

    monkeypatch.setenv("XR_UNMIX_DATA", str(tmp_path))
    assert datasets.data_root() == tmp_path
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}.*XR_UNMIX_DATA"):
        datasets.load_jasper_ridge()


def test_earthlib_label_names_the_extra(monkeypatch):
    """Without earthlib, a library that needs it says which extra to install."""
    import sys

    from xr_unmix.library import load_library

    monkeypatch.setitem(sys.modules, "earthlib", None)  # import earthlib -> ImportError
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'xr-unmix\[scenes\]'"):
        load_library("earthlib")
