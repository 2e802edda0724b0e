"""Plots label themselves (long_name, units); ``da.unmix.plot`` leaves "spatial_ref = 0" out of the
title, and importing xr_unmix changes no plot of any other array."""

from __future__ import annotations

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

import xr_unmix
from xr_unmix.testing import make_cube


@pytest.fixture
def ab():
    cube, E, _ = make_cube(12, 12)
    return cube.unmix.fcls(E)


def test_abundance_title_without_spatial_ref(ab):
    one = ab.isel(endmember=0)
    m = one.unmix.plot()
    title = m.axes.get_title()
    assert title == "endmember = m0"
    assert "abundance" in m.colorbar.ax.get_ylabel() and "[1]" in m.colorbar.ax.get_ylabel()
    assert one.rio.crs is not None and "spatial_ref" in one.coords  # the CRS stays on the array
    assert xr_unmix.plot is xr_unmix._plotting.plot
    plt.close("all")


def test_plain_plot_is_xarrays(ab):
    """``DataArray.plot`` is untouched: the title is xarray's own, with the CRS coordinate, and a
    plain DataArray plots as it does without xr_unmix (checked in a fresh interpreter too)."""
    m = ab.isel(endmember=0).plot()
    assert "spatial_ref = 0" in m.axes.get_title()  # xarray's behaviour, not ours to change
    assert "abundance" in m.colorbar.ax.get_ylabel()  # the result labels itself
    plt.close("all")
    code = ("import matplotlib; matplotlib.use('Agg'); import numpy as np, xarray as xr\n"
            "before = xr.DataArray._title_for_slice\n"
            "da = xr.DataArray(np.ones((2, 2)), dims=('y', 'x')).assign_coords("
            "crs=xr.DataArray(0, attrs={'crs_wkt': 'x'}), t=3)\n"
            "want = da.plot().axes.get_title()\n"
            "import xr_unmix\n"
            "assert xr.DataArray._title_for_slice is before\n"
            "got = da.plot().axes.get_title()\n"
            "assert got == want == 'crs = 0, t = 3', (got, want)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cube_slice_title_and_other_scalars_kept():
    cube, _, _ = make_cube(12, 12)
    m = cube.isel(band=3).assign_coords(time=5).unmix.plot()
    title = m.axes.get_title()
    assert "spatial_ref" not in title and "band = 4" in title and "time = 5" in title
    plt.close("all")


def test_facets_titles_and_groupby_keeps_crs(ab):
    g = ab.unmix.plot(col="endmember")
    assert [ax.get_title() for ax in g.axs.flat] == ["endmember = m0", "endmember = m1",
                                                     "endmember = m2"]
    plt.close("all")
    # why the CRS stays in the coordinate: it survives arithmetic and class sums
    classes = ab.assign_coords({"class": ("endmember", ["a", "a", "b"])}).groupby("class").sum()
    assert (ab * 100).rio.crs == classes.rio.crs == ab.rio.crs
    assert np.isfinite(classes.values).all()
