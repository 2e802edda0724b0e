"""Plot titles without the grid-mapping noise: ``ab.isel(endmember=0).plot()`` is titled
``endmember = soil``, not ``endmember = soil, spatial_ref = 0``.

xarray titles a plot with every coordinate of size one (``DataArray._title_for_slice``), and the CRS
of a rioxarray / CF array lives in such a coordinate: ``spatial_ref``, a 0-d integer holding the CRS in
its attributes (rioxarray issue 443). The CRS stays there (``ab.rio.crs``, the writers and
``decode_coords="all"`` need it); only the title leaves out a 0-d coordinate that is a CF grid
mapping (attributes ``crs_wkt``, ``spatial_ref`` or ``grid_mapping_name``). Installed once on
``import xr_unmix``; it changes nothing else, and nothing if xarray no longer has the method.
"""

from __future__ import annotations

from typing import Any

import xarray as xr

_GRID_MAPPING_ATTRS = ("crs_wkt", "spatial_ref", "grid_mapping_name")


def grid_mapping_coords(da: xr.DataArray) -> list[str]:
    """Names of the 0-d coordinates of ``da`` that are CF grid mappings (hold a CRS)."""
    return [str(n) for n, c in da.coords.items()
            if c.ndim == 0 and any(a in c.attrs for a in _GRID_MAPPING_ATTRS)]


def install() -> None:
    """Make ``DataArray._title_for_slice`` skip grid-mapping coordinates (idempotent)."""
    original = getattr(xr.DataArray, "_title_for_slice", None)
    if original is None or getattr(original, "_xr_unmix", False):
        return

    def _title_for_slice(self: xr.DataArray, *args: Any, **kwargs: Any) -> str:
        drop = grid_mapping_coords(self)
        return original(self.drop_vars(drop) if drop else self, *args, **kwargs)

    _title_for_slice._xr_unmix = True  # type: ignore[attr-defined]
    _title_for_slice.__doc__ = original.__doc__
    xr.DataArray._title_for_slice = _title_for_slice  # type: ignore[method-assign]
