"""Warnings name the user's line (this file), whatever the path through the package."""

from __future__ import annotations

import numpy as np
import pytest

import xr_unmix
from xr_unmix import ConvergenceWarning
from xr_unmix.testing import make_cube


def _stored_integers():
    cube, E, _ = make_cube(8, 8)
    return (cube * 10000).astype("uint16"), E


@pytest.mark.parametrize("via", ["accessor", "function", "sunsal"])
def test_units_warning_points_here(via):
    cube, E = _stored_integers()
    with pytest.warns(UserWarning, match="scale") as rec:
        if via == "accessor":
            cube.unmix.fcls(E)
        elif via == "function":
            xr_unmix.fcls(cube, E)
        else:
            xr_unmix.sunsal(cube, E)
    assert {w.filename for w in rec if "scale" in str(w.message)} == {__file__}


def test_convergence_warning_points_here():
    from xr_unmix.solvers import sunsal_solve

    cube, E, _ = make_cube(8, 8)
    Y = cube.values.reshape(cube.sizes["band"], -1) + 0.05  # off the simplex: slow to converge
    with pytest.warns(ConvergenceWarning) as rec:
        sunsal_solve(Y, E.values, max_iter=3, tol=1e-12, polish=False)
    assert [w.filename for w in rec if w.category is ConvergenceWarning] == [__file__]


@pytest.mark.parametrize("writer", ["to_cog", "write"])
def test_missing_crs_warning_points_here(tmp_path, writer):
    cube, E, _ = make_cube(8, 8)
    ab = cube.unmix.fcls(E).drop_vars("spatial_ref")
    ab.attrs.pop("crs", None)
    assert ab.rio.crs is None
    with pytest.warns(UserWarning, match="without a CRS") as rec:
        if writer == "to_cog":
            xr_unmix.to_cog(ab, tmp_path / "a.tif")
        else:
            xr_unmix.write(ab, cog=tmp_path / "a.tif", zarr=tmp_path / "a.zarr")
    files = {w.filename for w in rec if "without a CRS" in str(w.message)}
    assert files == {__file__}
    assert np.isfinite(xr_unmix.open_abundance(tmp_path / "a.tif").values).all()
