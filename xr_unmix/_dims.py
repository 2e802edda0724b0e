"""Cubes whose dims are named otherwise: ``wavelength``/``bands`` for ``band``, ``lat``/``lon`` for
``y``/``x``, band-last ``(y, x, wavelength)`` as hyperproc and netCDF products give them.

:func:`conform_cube` renames them to ``(band, y, x)`` from an explicit ``dims=`` mapping (the accessor's
``dims=`` keyword goes through it); :func:`rename_hint` is the one message that
:func:`xr_unmix._cube.check_dims` gives when a cube's dims are not ``band``/``y``/``x``: the exact call
that renames them. The wavelength coordinate survives: a spectral dim is *swapped* (its coordinate stays,
as ``wavelength``), not renamed into ``band``. The dim order does not matter (band-last works as is).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from ._units import to_nm, wavelength_unit
from .errors import DimensionError, InputTypeError

ROLES = ("band", "y", "x")

#: dim names taken for each role (lower case) when suggesting a rename
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "band": ("band", "bands", "wavelength", "wavelengths", "wl", "spectral", "spectrum", "channel",
             "channels", "lambda", "frequency"),
    "y": ("y", "lat", "latitude", "row", "rows", "line", "lines", "northing", "downtrack", "ortho_y"),
    "x": ("x", "lon", "long", "longitude", "col", "cols", "column", "columns", "sample", "samples",
          "easting", "crosstrack", "ortho_x"),
}
_WAVELENGTH_NAMES = ("wavelength", "wavelengths", "wl", "lambda")


def guess_roles(dims: tuple[Hashable, ...]) -> dict[str, Hashable]:
    """Map each role (``band``, ``y``, ``x``) to the dim of ``dims`` that its name suggests.

    A role no dim name suggests is left out; when exactly one role and one dim are left over, they
    are paired.
    """
    found: dict[str, Hashable] = {}
    for role in ROLES:
        for d in dims:
            if str(d).lower() in ROLE_NAMES[role] and d not in found.values():
                found[role] = d
                break
    rest_roles = [r for r in ROLES if r not in found]
    rest_dims = [d for d in dims if d not in found.values()]
    if len(rest_roles) == 1 and len(rest_dims) == 1:
        found[rest_roles[0]] = rest_dims[0]
    return found


def _call(mapping: Mapping[str, Hashable]) -> str:
    band = mapping.get("band")
    spatial = {mapping[r]: r for r in ("y", "x") if r in mapping and mapping[r] != r}
    call = "cube"
    if band is not None and band != "band":
        call += f".swap_dims({{{band!r}: 'band'}})"
    if spatial:
        call += f".rename({spatial!r})"
    return call


def rename_hint(cube: xr.DataArray) -> str:
    """The message for a cube whose dims are not ``(band, y, x)``: what to call to fix them."""
    dims = tuple(cube.dims)
    have = f"expected a DataArray with dims ('band', 'y', 'x') in any order; this one has dims {dims}"
    if len(dims) != 3:
        return (f"{have}: a cube needs exactly one spectral and two spatial dims (select or squeeze "
                "the others, e.g. cube.isel(time=0))")
    roles = guess_roles(dims)
    if len(roles) == 3:
        theirs = {r: roles[r] for r in ROLES}
        return (f"{have}. Rename them with {_call(theirs)} (the spectral coordinate stays, as "
                f"'wavelength' where it holds wavelengths), or pass dims={theirs!r} to the cube.unmix "
                "methods or to xr_unmix.conform_cube")
    return (f"{have}. Name the spectral dim and the two spatial ones, e.g. "
            f"xr_unmix.conform_cube(cube, dims={{'band': '<spectral dim>', 'y': '<row dim>', "
            f"'x': '<column dim>'}}), or pass that dims= mapping to the cube.unmix methods")


def _normalise_mapping(cube: xr.DataArray, dims: Mapping[Hashable, Hashable]) -> dict[str, Hashable]:
    """``{role: cube dim}`` from either ``{"band": "wavelength", ...}`` or xarray's rename direction
    ``{"wavelength": "band", ...}``."""
    items = dict(dims)
    if all(k in ROLES for k in items) and all(v in cube.dims for v in items.values()):
        out = {str(k): v for k, v in items.items()}
    elif all(v in ROLES for v in items.values()) and all(k in cube.dims for k in items):
        out = {str(v): k for k, v in items.items()}
    else:
        raise DimensionError(
            f"dims={dims!r} must map 'band', 'y' and 'x' to dims of the cube {tuple(cube.dims)} "
            "(e.g. dims={'band': 'wavelength', 'y': 'lat', 'x': 'lon'})")
    for r in ROLES:
        if r not in out and r in cube.dims:
            out[r] = r
    missing = [r for r in ROLES if r not in out]
    if missing or len(set(out.values())) != len(out):
        raise DimensionError(f"dims={dims!r} must name three different dims of the cube "
                             f"{tuple(cube.dims)} for 'band', 'y' and 'x' (missing: {missing})")
    return out


def conform_cube(cube: xr.DataArray, dims: Mapping[Hashable, Hashable] | None = None) -> xr.DataArray:
    """Return ``cube`` with dims named ``band``, ``y``, ``x`` (their order is kept).

    Parameters
    ----------
    cube : DataArray with one spectral and two spatial dims, in any order (band-last included)
    dims : mapping, optional
        ``{"band": "wavelength", "y": "lat", "x": "lon"}`` (role -> the cube's dim), or the other way
        round as :meth:`xarray.DataArray.rename` takes it. A role left out keeps its dim (it must
        then already be named so). ``None``: the cube must already have ``band``/``y``/``x``.

    Returns
    -------
    DataArray
        The same data (no copy) with the spectral dim swapped to ``band`` (its coordinate is kept; a
        coordinate named like ``wavelength(s)``, the dim's own or another one on it, becomes the
        ``wavelength`` coordinate in nm the estimators check) and the spatial dims renamed ``y``/``x``, with their coordinates.

    Raises
    ------
    DimensionError
        With the rename to use, when the dims cannot be mapped.
    """
    if isinstance(cube, xr.Dataset):
        raise InputTypeError(f"expected an xarray.DataArray, got a Dataset; pick its cube variable "
                             f"(e.g. ds[{next(iter(cube.data_vars), 'name')!r}])")
    if dims is None:
        if set(cube.dims) == set(ROLES) and cube.ndim == 3:
            return cube
        raise DimensionError(rename_hint(cube))
    roles = _normalise_mapping(cube, dims)
    out = cube
    spec = roles["band"]
    if spec != "band":
        out = out.swap_dims({spec: "band"})
        if spec in out.coords and "wavelength" not in out.coords and \
                str(spec).lower() in _WAVELENGTH_NAMES:
            out = out.rename({spec: "wavelength"})
    if "wavelength" not in out.coords:  # another coordinate on the spectral dim named so
        named = [k for k, c in out.coords.items() if c.dims == ("band",)
                 and str(k).lower() in _WAVELENGTH_NAMES]
        if len(named) == 1:
            out = out.rename({named[0]: "wavelength"})
    spatial = {roles[r]: r for r in ("y", "x") if roles[r] != r}
    if spatial:
        out = out.rename(spatial)
    if "wavelength" in out.coords and out.coords["wavelength"].dims == ("band",):
        out = out.assign_coords(wavelength=_in_nm(out.coords["wavelength"]))
    return out


def _in_nm(wl: xr.DataArray) -> xr.DataArray:
    """The wavelength coordinate in nm (micrometres by their ``units`` attr, or all values < 30)."""
    unit = wavelength_unit(wl.attrs.get("units"))
    vals = np.asarray(wl.values, dtype=np.float64)
    nm = to_nm(vals, unit if unit != "index" else None)
    if nm is None or np.array_equal(nm, vals):
        return wl
    return wl.copy(data=nm).assign_attrs(units="nm")


def spatial_names(cube: xr.DataArray, dims: Mapping[Hashable, Hashable]) -> dict[str, Hashable]:
    """``{"y": the cube's row dim, "x": its column dim}`` under the ``dims=`` mapping (only those
    named otherwise than ``y``/``x``)."""
    roles = _normalise_mapping(cube, dims)
    return {r: roles[r] for r in ("y", "x") if roles[r] != r}


def restore_dims(result: Any, names: Mapping[str, Hashable]) -> Any:
    """``result`` with its ``y``/``x`` dims named back as the input cube's (``names`` from
    :func:`spatial_names`): a DataArray, a Dataset, or a tuple of them (each renamed where it has
    those dims). The coordinates, the CRS (``spatial_ref``) and the transform go along."""
    if isinstance(result, tuple):
        return tuple(restore_dims(r, names) for r in result)
    if not names or not isinstance(result, xr.DataArray | xr.Dataset):
        return result
    rename = {r: n for r, n in names.items() if r in result.dims}
    if not rename:
        return result
    out = result.rename(rename)
    if "y" in rename and "x" in rename:  # rioxarray finds only x/y or longitude/latitude itself
        import rioxarray  # noqa: F401

        out.rio.set_spatial_dims(x_dim=rename["x"], y_dim=rename["y"], inplace=True)
    return out
