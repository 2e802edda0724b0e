"""Library look-up: resampling coverage, loading USGS and earthlib, identification by spectral angle."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xr_unmix.library import _resample, _uncovered, identify, label_endmembers, load_library


def _lib(wl: np.ndarray, values: np.ndarray, names: list[str]) -> xr.DataArray:
    return xr.DataArray(values, dims=("band", "endmember"),
                        coords={"wavelength": ("band", wl), "endmember": names}, name="toy")


def test_resample_masks_outside_range_and_gaps():
    wl = np.r_[np.arange(400.0, 1350.0, 10.0), np.arange(1460.0, 2460.0, 10.0)]
    lib = _lib(wl, np.stack([wl / 1000.0, np.ones_like(wl)], axis=1), ["lin", "flat"])
    target = np.array([395.0, 405.0, 1000.0, 1345.0, 1400.0, 1465.0, 2455.0])
    unc = _uncovered(wl, target)
    np.testing.assert_array_equal(unc, [True, False, False, True, True, False, True])
    out = _resample(lib, target)
    assert np.isnan(out[unc]).all()
    np.testing.assert_allclose(out[~unc, 0], target[~unc] / 1000.0)  # linear is reproduced exactly
    np.testing.assert_allclose(out[~unc, 1], 1.0)


def test_resample_unsorted_targets_and_no_overlap():
    wl = np.arange(400.0, 1000.0, 5.0)
    lib = _lib(wl, (wl ** 2)[:, None], ["sq"])
    target = np.array([700.0, 450.0, 452.5])  # AVIRIS-like, not monotonic
    np.testing.assert_allclose(_resample(lib, target)[:, 0], [700.0**2, 450.0**2, 452.5**2],
                               rtol=1e-4)
    with pytest.raises(ValueError, match="no overlap"):
        _resample(lib, np.array([1500.0, 1600.0]))


def test_identify_finds_the_spectrum_itself():
    rng = np.random.default_rng(0)
    wl = np.arange(400.0, 2500.0, 10.0)
    smooth = np.cumsum(rng.normal(0, 0.02, (wl.size, 6)), axis=0) + 0.5
    lib = _lib(wl, smooth, [f"m{i}" for i in range(6)])
    cube_wl = np.linspace(420, 2480, 150)
    E = xr.DataArray(2.0 * _resample(lib, cube_wl)[:, [4, 1]], dims=("band", "endmember"),
                     coords={"wavelength": ("band", cube_wl), "endmember": ["vca0", "vca1"]})
    ds = identify(E, lib, k=3)
    assert ds.sizes == {"endmember": 2, "rank": 3}
    assert list(ds.name.values[:, 0]) == ["m4", "m1"]
    assert (ds.sad.values[:, 0] < 1e-6).all()
    assert (np.diff(ds.sad.values, axis=1) >= 0).all()
    labelled = label_endmembers(E, lib)
    assert list(labelled.label.values) == ["m4", "m1"]
    assert list(labelled.label_library.values) == ["toy", "toy"]


def test_identify_needs_wavelengths():
    E = xr.DataArray(np.ones((5, 2)), dims=("band", "endmember"))
    lib = _lib(np.linspace(400, 900, 5), np.ones((5, 1)), ["a"])
    with pytest.raises(ValueError, match="wavelength"):
        identify(E, lib)
    assert identify(E, lib, wavelengths=np.linspace(400, 900, 5)).sizes["rank"] == 1


def test_unknown_library():
    with pytest.raises(ValueError, match="unknown library"):
        load_library("aster")


def test_earthlib_library():
    pytest.importorskip("earthlib")
    lib = load_library("earthlib")
    assert lib.dims == ("band", "endmember") and lib.sizes["endmember"] == 313
    wl = lib.wavelength.values
    assert wl.min() == pytest.approx(400.0) and wl.max() == pytest.approx(2450.0)  # nm, not um
    assert "vegetation/canopy" in set(lib.material.values)
    # a library spectrum, resampled onto another grid, is found again with a small angle
    target = np.arange(405.0, 1340.0, 7.0)
    E = xr.DataArray(_resample(lib, target)[:, [17]], dims=("band", "endmember"),
                     coords={"wavelength": ("band", target), "endmember": ["x"]})
    ds = identify(E, "earthlib", k=1)
    assert ds.sad.values[0, 0] < 1e-6


def test_usgs_library_and_jasper_vegetation():
    from xr_unmix.datasets import load_jasper_ridge

    try:
        cube, E, _ = load_jasper_ridge()
        usgs = load_library("usgs")
    except FileNotFoundError:
        pytest.skip("benchmark data not available")
    assert usgs.sizes["endmember"] == 62
    ds = identify(E, ["usgs", "earthlib"], k=1)
    # Jasper's reference 'tree' endmember is closest to a vegetation spectrum
    assert ds.sel(endmember="tree").material.values[0] == "vegetation/canopy"
    assert ds.sel(endmember="tree").sad.values[0] < 0.15
