"""PRISMA L2D (merged VNIR + SWIR, descending wavelengths, bands at 0 nm) and the EMIT L2A MASK
flags, against fixtures laid out as the products are (tests/io/make_product_fixtures.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xr_unmix as xu
from xr_unmix.errors import InputError, ParameterError
from xr_unmix.io.bands import DEFAULT_IGNORE_REGIONS, in_windows

sys.path.insert(0, str(Path(__file__).parent))
import make_product_fixtures as fx

pytest.importorskip("h5netcdf")


# -- PRISMA -------------------------------------------------------------------------------------------

@pytest.fixture
def prisma(tmp_path):
    return fx.write_prisma(tmp_path)


def _acquired(info):
    wl = np.concatenate([info["bands"]["Vnir"], info["bands"]["Swir"]])
    return np.sort(wl[wl > 0])


def test_prisma_ready_cube(prisma):
    cube = xu.open_cube(prisma["path"], chunks=4)
    assert cube.dims == ("band", "y", "x") and cube.chunks is not None
    wl = _acquired(prisma)
    keep = wl[~in_windows(wl, DEFAULT_IGNORE_REGIONS)]
    np.testing.assert_allclose(cube.wavelength.values, keep, rtol=1e-6)  # ascending, no 0 nm band
    assert (np.diff(cube.wavelength.values) >= 0).all() and (cube.wavelength > 0).all()
    assert cube.attrs["bands_dropped"] == 239 - keep.size
    assert set(cube.spectrometer.values) == {"VNIR", "SWIR"}
    overlap = cube.where((cube.wavelength > 935) & (cube.wavelength < 980), drop=True)
    assert set(overlap.spectrometer.values) == {"VNIR", "SWIR"}  # both detectors' bands kept
    assert cube.rio.crs.to_epsg() == prisma["epsg"]
    assert tuple(cube.rio.transform())[:6] == pytest.approx(prisma["transform"])
    vals = cube.values
    for i, j in prisma["pad"]:
        assert np.isnan(vals[:, i, j]).all()  # DN 0: the north-up grid's padding
    assert cube.dtype == np.float32 and 0.0 < np.nanmin(vals) and np.nanmax(vals) < 1.0


def test_prisma_unmixes_from_both_spectrometers(prisma):
    cube = xu.open_cube(prisma["path"])
    ab = cube.unmix.fcls(fx.endmembers(cube))
    assert ab.rio.crs.to_epsg() == prisma["epsg"]
    A, ok = prisma["abundance"], np.ones(prisma["abundance"].shape[1:], bool)
    for i, j in prisma["pad"]:
        ok[i, j] = False
    np.testing.assert_allclose(ab.values[:, ok], A[:, ok], atol=1e-3)  # SWIR scale 0..0.8 decoded
    assert np.isnan(ab.values[:, ~ok]).all()


def test_prisma_keep_flags_the_0nm_bands(prisma):
    kept = xu.open_cube(prisma["path"], bad_bands="keep", ignore_regions=None)
    assert kept.sizes["band"] == 239 and int((~kept.good_band).sum()) == 5  # 3 VNIR + 2 SWIR
    bad = kept.isel(band=~kept.good_band.values)
    assert np.isnan(bad.wavelength.values).all() and np.isnan(bad.values).all()
    dropped = xu.open_cube(prisma["path"], ignore_regions=None)
    assert dropped.sizes["band"] == 234 and dropped.attrs["bands_dropped"] == 5
    np.testing.assert_array_equal(kept.sel(band=kept.good_band).band, dropped.band)
    np.testing.assert_array_equal(kept.sel(band=kept.good_band).values, dropped.values)


def test_prisma_other_levels_refused(tmp_path):
    info = fx.write_prisma(tmp_path, level="2C")
    with pytest.raises(InputError, match="level 2C.*L2D"):
        xu.open_cube(info["path"])


def test_prisma_band_table_must_match_the_cube(tmp_path):
    import h5py

    info = fx.write_prisma(tmp_path)
    with h5py.File(info["path"], "a") as f:
        f.attrs["List_Cw_Swir"] = f.attrs["List_Cw_Swir"][:170]
    with pytest.raises(InputError, match=r"List_Cw_Swir_Flags \(of 173 bands; List_Cw_Swir has 170"):
        xu.open_cube(info["path"])
    with h5py.File(info["path"], "a") as f:
        for key in ("List_Fwhm_Swir", "List_Cw_Swir_Flags"):
            f.attrs[key] = f.attrs[key][:170]
    with pytest.raises(InputError, match="SWIR_Cube has 173 bands.*lists 170"):
        xu.open_cube(info["path"])


# -- EMIT L2A MASK ------------------------------------------------------------------------------------

@pytest.fixture
def emit_pair(tmp_path):
    return fx.write_emit(tmp_path), fx.write_emit_mask(tmp_path)


def _flagged(mask_info, names):
    m = mask_info["mask"]
    return (m[:, :, [fx.MASK_BANDS.index(n) for n in names]] > 0).any(axis=2)


def test_emit_mask_on_the_swath(emit_pair):
    emit, mask = emit_pair
    plain = xu.open_cube(emit["path"], ortho=False).values
    got = xu.open_cube(emit["path"], ortho=False, mask=mask["path"])
    flagged = _flagged(mask, ["Aggregate Flag"])
    assert flagged[6, 6] and flagged[4, 4]  # AOD550 > threshold and water are in the aggregate
    vals = got.values
    assert np.isnan(vals[:, flagged]).all()
    np.testing.assert_array_equal(vals[:, ~flagged], plain[:, ~flagged])
    assert got.attrs["mask_swath_pixels_flagged"] == int(flagged.sum())
    assert got.attrs["mask_flags"] == "['aggregate flag']"


def test_emit_mask_flags_chosen_and_orthorectified(emit_pair):
    emit, mask = emit_pair
    cube = xu.open_cube(emit["path"], mask=mask["path"], mask_flags=["cloud", "Cirrus flag"], chunks=4)
    flagged = _flagged(mask, ["Cloud flag", "Cirrus flag"])
    assert not _flagged(mask, ["Cloud flag", "Cirrus flag"])[4, 4]  # water not chosen
    vals, gx, gy = cube.values, emit["glt_x"], emit["glt_y"]
    plain = xu.open_cube(emit["path"]).values
    checked = 0
    for i, j in zip(*np.nonzero(gx)):
        if flagged[gy[i, j] - 1, gx[i, j] - 1]:
            assert np.isnan(vals[:, i, j]).all()
            checked += 1
        else:
            np.testing.assert_array_equal(vals[:, i, j], plain[:, i, j])
    assert checked >= 1
    ab = cube.unmix.fcls(fx.endmembers(cube))
    assert np.isnan(ab.values[:, np.isnan(vals).all(axis=0)]).all()


def test_emit_mask_errors(emit_pair, tmp_path):
    emit, mask = emit_pair
    with pytest.raises(ParameterError, match="unknown EMIT mask flag 'snow'"):
        xu.open_cube(emit["path"], mask=mask["path"], mask_flags="snow")
    (tmp_path / "other").mkdir()
    other = fx.write_emit_mask(tmp_path / "other", nd=5, nc=5, flags={})
    with pytest.raises(InputError, match="5 x 5 swath but the reflectance is 8 x 10"):
        xu.open_cube(emit["path"], mask=other["path"])
    with pytest.raises(InputError, match="not an EMIT L2A MASK"):
        xu.open_cube(emit["path"], mask=emit["path"])
    envi = fx.write_envi(tmp_path)
    with pytest.raises(ParameterError, match="mask= is for EMIT"):
        xu.open_cube(envi["path"], mask=mask["path"])


def test_products_open_in_a_fresh_interpreter(emit_pair, tmp_path):
    """open_cube is the first use of rioxarray in a script: the readers register .rio themselves."""
    emit, _ = emit_pair
    prisma = fx.write_prisma(tmp_path)
    code = ("import sys, xr_unmix as xu\n"
            "for p in sys.argv[1:]:\n"
            "    print(xu.open_cube(p).rio.crs)\n")
    out = subprocess.run([sys.executable, "-c", code, str(emit["path"]), str(prisma["path"])],
                         check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.split() == ["EPSG:4326", "EPSG:32633"]
