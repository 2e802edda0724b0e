"""Plots label themselves (long_name, units) and carry no "spatial_ref = 0" in their titles."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import xr_unmix  # noqa: E402,F401
from xr_unmix.testing import make_cube  # noqa: E402


@pytest.fixture
def ab():
    cube, E, _ = make_cube(12, 12)
    return cube.unmix.fcls(E)


def test_title_without_spatial_ref(ab):
    assert ab.rio.crs is not None and "spatial_ref" in ab.coords  # the CRS stays
    m = ab.isel(endmember=0).plot()
    title = m.axes.get_title()
    assert "spatial_ref" not in title and "endmember = m0" in title
    assert "abundance" in m.colorbar.ax.get_ylabel()
    plt.close("all")


def test_cube_slice_title_and_other_scalars_kept(ab):
    cube, _, _ = make_cube(12, 12)
    m = cube.isel(band=3).assign_coords(time=5).plot()
    title = m.axes.get_title()
    assert "spatial_ref" not in title and "band = 4" in title and "time = 5" in title
    plt.close("all")


def test_facets_titles(ab):
    g = ab.plot(col="endmember")
    assert [ax.get_title() for ax in g.axs.flat] == ["endmember = m0", "endmember = m1",
                                                     "endmember = m2"]
    plt.close("all")
