"""Plots titled without the grid-mapping noise: ``ab.isel(endmember=0).unmix.plot()`` is titled
``endmember = soil``, where ``ab.isel(endmember=0).plot()`` says ``endmember = soil, spatial_ref = 0``.

xarray titles a plot with every coordinate of size one, and the CRS of a rioxarray / CF array lives in
such a coordinate: ``spatial_ref``, a 0-d integer holding the CRS in its attributes (rioxarray issue
443). The results keep that coordinate, because it is what carries the CRS and transform through
arithmetic, ``groupby`` reductions and the writers (``ab.rio.crs``, a rotated grid's ``GeoTransform``,
``decode_coords="all"``); rioxarray's only other places for them, ``attrs["crs"]`` and
``attrs["transform"]``, are dropped by ``ab * 100`` and by ``ab.groupby("class").sum()``.
:func:`plot` (``da.unmix.plot``) plots a copy without those coordinates; nothing global is changed:
``DataArray.plot`` behaves as xarray ships it, for every array.
"""

from __future__ import annotations

from typing import Any

import xarray as xr

_GRID_MAPPING_ATTRS = ("crs_wkt", "spatial_ref", "grid_mapping_name")


def grid_mapping_coords(da: xr.DataArray) -> list[str]:
    """Names of the 0-d coordinates of ``da`` that are CF grid mappings (hold a CRS)."""
    return [str(n) for n, c in da.coords.items()
            if c.ndim == 0 and any(a in c.attrs for a in _GRID_MAPPING_ATTRS)]


def plot(da: xr.DataArray, **kwargs: Any) -> Any:
    """``da.plot(**kwargs)``, titled without the 0-d CF grid-mapping coordinate (``spatial_ref = 0``).

    Parameters
    ----------
    da : DataArray
        Any array xarray plots: an abundance map ``(endmember, y, x)`` (with ``col="endmember"``), one
        endmember's map ``(y, x)``, a band of a cube. Its ``long_name``/``units`` label the colour bar
        (``abundance [1]`` for a result).
    **kwargs
        Passed to :meth:`xarray.DataArray.plot` (``col=``, ``vmin=``, ``ax=``, ``cmap=``, ...).

    Returns
    -------
    What ``da.plot(**kwargs)`` returns: a matplotlib artist, or a ``FacetGrid`` with ``col=``/``row=``.

    Notes
    -----
    Only the plotted copy lacks the grid-mapping coordinates (those with a ``crs_wkt``,
    ``spatial_ref`` or ``grid_mapping_name`` attribute); ``da`` keeps its CRS. Other size-one
    coordinates (``endmember = soil``, ``band = 4``, ``time = ...``) stay in the title.
    """
    drop = grid_mapping_coords(da)
    return (da.drop_vars(drop) if drop else da).plot(**kwargs)
