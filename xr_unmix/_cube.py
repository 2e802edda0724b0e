"""Validation of inputs and assembly of outputs: the one place that knows about dims, CRS and nodata.

Every estimator goes through :func:`prepare_cube` (cube facts + a float array with invalid pixels as NaN)
and :func:`finish` (coordinates, CRS, transform and fresh attrs on the ``(endmember, y, x)`` result).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from .errors import BandMismatchError, DimensionError

BAND, Y, X, ENDMEMBER = "band", "y", "x", "endmember"


@dataclass(frozen=True)
class CubeFacts:
    """Facts about a cube, computed once by :func:`cube_facts`."""

    n_bands: int
    shape_yx: tuple[int, int]
    crs: Any  #: ``rasterio.crs.CRS`` or ``None``
    nodata: float | None  #: a value marking invalid pixels besides NaN, or ``None``
    wavelengths: np.ndarray | None  #: nm, along ``band``, or ``None``
    is_dask: bool


def _rio(cube: xr.DataArray) -> Any:
    import rioxarray  # noqa: F401  (registers .rio)

    return cube.rio


def check_dims(cube: xr.DataArray, required: Sequence[str] = (BAND, Y, X)) -> None:
    """Raise :class:`DimensionError` unless ``cube`` has exactly the dims ``required`` (any order)."""
    if not isinstance(cube, xr.DataArray):
        raise TypeError(f"expected an xarray.DataArray, got {type(cube).__name__}")
    if set(cube.dims) != set(required) or cube.ndim != len(required):
        raise DimensionError(
            f"expected a DataArray with dims {tuple(required)} (any order); this one has dims "
            f"{tuple(cube.dims)}" + (" (rename the spectral dim to 'band')" if BAND not in cube.dims
                                     else "")
        )


def cube_facts(cube: xr.DataArray) -> CubeFacts:
    """Check ``cube`` (dims ``band, y, x`` in any order) and collect its facts."""
    check_dims(cube)
    rio = _rio(cube)
    crs = rio.crs
    nodata = rio.nodata
    if nodata is not None and np.isnan(nodata):
        nodata = None  # NaN is always treated as invalid anyway
    wl = None
    if "wavelength" in cube.coords and cube.coords["wavelength"].dims == (BAND,):
        wl = np.asarray(cube.coords["wavelength"].values, dtype=np.float64)
    return CubeFacts(
        n_bands=int(cube.sizes[BAND]),
        shape_yx=(int(cube.sizes[Y]), int(cube.sizes[X])),
        crs=crs,
        nodata=None if nodata is None else float(nodata),
        wavelengths=wl,
        is_dask=cube.chunks is not None,
    )


def prepare_cube(cube: xr.DataArray, dtype: Any = np.float32) -> tuple[Any, CubeFacts]:
    """Return the cube's data as a float ``(band, y, x)`` array with invalid pixels set to NaN.

    Integer cubes are cast to ``dtype``. Any pixel holding NaN or the nodata value in *any* band is
    NaN in every band afterwards (the kernels turn it into NaN abundances). A dask-backed cube stays
    lazy, with the band axis merged into one chunk.
    """
    facts = cube_facts(cube)
    data = cube.transpose(BAND, Y, X).data
    if facts.is_dask:
        data = data.rechunk({0: -1})
    data = data.astype(dtype, copy=False) if data.dtype != dtype else data
    if facts.nodata is not None:
        raw = cube.transpose(BAND, Y, X).data
        if facts.is_dask:
            raw = raw.rechunk({0: -1})
        invalid = (raw == facts.nodata).any(axis=0)
        data = _where(invalid[None], np.nan, data)
    return data, facts


def check_units(cube: xr.DataArray, endmembers: np.ndarray) -> None:
    """Warn when the cube looks like stored integers while the endmembers are reflectance (0-1).

    Cheap (dtype and attrs only, nothing is computed). Two signs: an integer cube, or ``scale_factor``
    / ``add_offset`` attrs that say the values were not decoded (rioxarray without
    ``mask_and_scale=True``) -- each with endmembers no larger than 2. Abundances from such a pair are
    off by the scale (e.g. x10000) and their constraints hide it.
    """
    import warnings

    if endmembers.size == 0 or float(np.nanmax(np.abs(endmembers))) > 2.0:
        return
    scale = cube.attrs.get("scale_factor", 1.0)
    offset = cube.attrs.get("add_offset", 0.0)
    try:
        undecoded = float(scale) != 1.0 or float(offset) != 0.0
    except (TypeError, ValueError):
        undecoded = False
    if undecoded:
        why = (f"the cube's attrs carry scale_factor={scale}, add_offset={offset}: its values are "
               "stored numbers, not decoded")
    elif np.issubdtype(cube.dtype, np.integer):
        why = f"the cube is {cube.dtype} (stored integers, e.g. reflectance x 10000)"
    else:
        return
    warnings.warn(
        f"{why}, while the endmembers are at most 2 (reflectance 0-1): the abundances would be off by "
        "the scale factor. Open the cube with xr_unmix.open_cube or rioxarray.open_rasterio(..., "
        "mask_and_scale=True), or put the endmembers in the cube's units.", UserWarning, stacklevel=3)


def _where(cond: Any, a: Any, b: Any) -> Any:
    if hasattr(b, "dask"):
        import dask.array as da

        return da.where(cond, a, b)
    return np.where(cond, a, b).astype(b.dtype, copy=False)


def as_endmembers(
    endmembers: Any,
    n_bands: int | None = None,
    names: Sequence[str] | None = None,
) -> xr.DataArray:
    """Normalise endmembers to a DataArray ``(band, endmember)`` with string names.

    Parameters
    ----------
    endmembers : DataArray (band, endmember) or array-like (bands, R)
    n_bands : int, optional
        The cube's band count; a mismatch raises :class:`BandMismatchError` stating both counts.
    names : sequence of str, optional
        Names for a plain array (default ``em0, em1, ...``).
    """
    if isinstance(endmembers, xr.DataArray):
        check_dims(endmembers, (BAND, ENDMEMBER))
        E = endmembers.transpose(BAND, ENDMEMBER)
        if ENDMEMBER not in E.coords:
            E = E.assign_coords(endmember=[f"em{i}" for i in range(E.sizes[ENDMEMBER])])
    else:
        arr = np.asarray(endmembers, dtype=np.float64)
        if arr.ndim != 2:
            raise DimensionError(f"endmembers must be 2-D (bands, n_endmembers); got shape {arr.shape}")
        nm = list(names) if names is not None else [f"em{i}" for i in range(arr.shape[1])]
        if len(nm) != arr.shape[1]:
            raise ValueError(f"{len(nm)} names for {arr.shape[1]} endmembers")
        E = xr.DataArray(arr, dims=(BAND, ENDMEMBER), coords={ENDMEMBER: nm})
    values = np.asarray(E.values, dtype=np.float64)
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise ValueError(f"the endmembers contain {bad} NaN/inf values; clean or resample them first")
    if n_bands is not None and values.shape[0] != n_bands:
        raise BandMismatchError(
            f"the endmembers have {values.shape[0]} bands but the cube has {n_bands}; "
            "use xr_unmix.resample_spectra to put the spectra on the cube's wavelengths"
        )
    if E.sizes[ENDMEMBER] < 1:
        raise ValueError("no endmembers given")
    names_out = np.array([str(n) for n in E.coords[ENDMEMBER].values], dtype=object)
    if len(set(names_out)) != len(names_out):
        raise ValueError(f"endmember names must be unique; got {list(names_out)}")
    return E.copy(data=values).assign_coords(endmember=names_out)


def _attr_value(v: Any) -> Any:
    """Make an attribute value safe for netCDF/Zarr/GeoTIFF tags."""
    if isinstance(v, bool | np.bool_):
        return int(v)
    if v is None:
        return "none"
    if isinstance(v, int | float | str | np.integer | np.floating):
        return v
    return str(v)


def finish(
    data: Any,
    cube: xr.DataArray,
    names: Sequence[str],
    attrs: Mapping[str, Any],
    *,
    name: str = "abundance",
    facts: CubeFacts | None = None,
) -> xr.DataArray:
    """Wrap an ``(endmember, y, x)`` array as a georeferenced DataArray.

    Coordinates ``y``/``x`` (and any coordinate that depends only on them) come from the cube,
    ``endmember`` from ``names``; the CRS and transform are written through rioxarray when the cube has
    them. Attrs are built from scratch (the cube's ``long_name``, ``scale_factor`` etc. do not leak in).
    """
    facts = facts or cube_facts(cube)
    coords: dict[str, Any] = {ENDMEMBER: np.array([str(n) for n in names], dtype=object)}
    for k, c in cube.coords.items():
        if set(c.dims) <= {Y, X} and k != "spatial_ref":
            coords[k] = c.variable
    out = xr.DataArray(data, dims=(ENDMEMBER, Y, X), coords=coords, name=name,
                       attrs={k: _attr_value(v) for k, v in attrs.items()})
    rio = _rio(cube)
    if facts.crs is not None:
        out = out.rio.write_crs(facts.crs)
        try:
            out = out.rio.write_transform(rio.transform(recalc=False))
        except Exception:  # noqa: BLE001  (no transform recoverable: rioxarray recomputes from coords)
            pass
    return out
