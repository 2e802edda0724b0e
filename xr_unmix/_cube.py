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

from ._graph import scatter_embedded
from ._warn import warn_user
from .errors import (
    BandMismatchError,
    DimensionError,
    InputError,
    InputTypeError,
    WavelengthMismatchError,
)
from .metadata import cf_result_attrs, input_record

BAND, Y, X, ENDMEMBER = "band", "y", "x", "endmember"

#: A value of at least this magnitude marks its pixel invalid, as nodata does: far beyond any
#: reflectance, radiance or stored integer, and where float32 sums of squares overflow (float32
#: sentinels such as -3.4e38 written without a nodata tag).
HUGE = 1e15


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
    """Raise :class:`DimensionError` unless ``cube`` has exactly the dims ``required`` (any order).

    For a cube (``band, y, x``) the message shows the exact rename to use
    (:func:`xr_unmix._dims.rename_hint`); :func:`xr_unmix._dims.conform_cube` does it.
    """
    if not isinstance(cube, xr.DataArray):
        hint = (f" (pick one of its variables, e.g. ds[{next(iter(cube.data_vars), 'name')!r}])"
                if isinstance(cube, xr.Dataset) else "")
        raise InputTypeError(f"expected an xarray.DataArray, got {type(cube).__name__}{hint}")
    if set(cube.dims) != set(required) or cube.ndim != len(required):
        if tuple(required) == (BAND, Y, X):
            from ._dims import rename_hint

            raise DimensionError(rename_hint(cube))
        raise DimensionError(
            f"expected a DataArray with dims {tuple(required)} (any order); this one has dims "
            f"{tuple(cube.dims)}" + (" (rename the spectral dim to 'band')" if BAND not in cube.dims
                                     else "")
        )


def cube_facts(cube: xr.DataArray) -> CubeFacts:
    """Check ``cube`` (dims ``band, y, x`` in any order) and collect its facts.

    Raises :class:`InputTypeError` for a non-numeric cube (bool, complex, strings),
    :class:`DimensionError` for an empty dim and :class:`InputError` for unknown dask chunk sizes.
    """
    check_dims(cube)
    if cube.dtype.kind not in "iuf":
        raise InputTypeError(f"the cube is {cube.dtype} ({_KIND.get(cube.dtype.kind, 'not numeric')}); "
                             "unmixing needs real numbers: integer or float reflectance")
    empty = [d for d in (BAND, Y, X) if cube.sizes[d] == 0]
    if empty:
        raise DimensionError(f"the cube is empty along {', '.join(empty)} (sizes "
                             f"{dict(cube.sizes)}); select a region with pixels and bands")
    if cube.chunks is not None and any(np.isnan(c) for cs in cube.chunks for c in cs):
        raise InputError("the cube's dask chunk sizes are unknown (NaN), e.g. after boolean "
                         "indexing; call cube.data.compute_chunk_sizes() or select with .isel/.sel")
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


_KIND = {"b": "booleans", "c": "complex numbers", "U": "strings", "S": "bytes", "O": "objects",
         "M": "dates", "m": "time spans", "V": "raw records"}


def prepare_cube(cube: xr.DataArray, dtype: Any = np.float32) -> tuple[Any, CubeFacts]:
    """Return the cube's data as a float ``(band, y, x)`` array with invalid pixels set to NaN.

    Integer cubes are cast to ``dtype``. Any pixel holding NaN, the nodata value or a value of
    magnitude :data:`HUGE` or more in *any* band is invalid: NaN (every band for nodata, that band
    otherwise -- the kernels turn either into NaN abundances). A dask-backed cube stays lazy, with
    the band axis merged into one chunk.
    """
    facts = cube_facts(cube)
    if facts.is_dask:  # an in-memory cube chunked by the user: blocks to the cluster, not the graph
        cube = cube.copy(data=scatter_embedded(cube.data))
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
    if facts.is_dask:
        data = data.map_blocks(_drop_huge, dtype=data.dtype)
    else:
        data = _drop_huge(data)
    return data, facts


def _drop_huge(block: np.ndarray) -> np.ndarray:
    """``block`` with values of magnitude >= :data:`HUGE` set to NaN (a copy only if there are any)."""
    huge = np.abs(block) >= HUGE
    if not huge.any():
        return block
    return np.where(huge, np.nan, block).astype(block.dtype, copy=False)


def stored_dtype(cube: xr.DataArray) -> np.dtype:
    """The dtype the values were stored with: ``encoding["dtype"]`` when a reader decoded them
    (rioxarray casts a masked ``uint16`` file to float), else the array's own dtype."""
    enc = cube.encoding.get("rasterio_dtype") or cube.encoding.get("dtype")
    try:
        return np.dtype(enc) if enc is not None else np.dtype(cube.dtype)
    except TypeError:
        return np.dtype(cube.dtype)


def units_problem(cube: xr.DataArray, endmembers: np.ndarray) -> str | None:
    """Why ``cube`` looks like stored integers next to reflectance endmembers (0-1), or ``None``.

    Cheap (dtype, encoding and attrs only, nothing is computed). Three signs, each with endmembers no
    larger than 2: ``scale_factor`` / ``add_offset`` attrs that say the values were not decoded
    (rioxarray without ``mask_and_scale=True``); an integer cube; or a float cube read from integers
    with no scale to decode them (``encoding["dtype"]`` integer and no ``scale_factor`` there -- a
    ``uint16`` reflectance x 10000 GeoTIFF without a scale tag). Abundances from such a pair are off
    by the scale and their constraints hide it.
    """
    if endmembers.size == 0 or float(np.nanmax(np.abs(endmembers))) > 2.0:
        return None
    scale = cube.attrs.get("scale_factor", 1.0)
    offset = cube.attrs.get("add_offset", 0.0)
    try:
        undecoded = float(scale) != 1.0 or float(offset) != 0.0
    except (TypeError, ValueError):
        undecoded = False
    stored = stored_dtype(cube)
    if undecoded:
        return (f"the cube's attrs carry scale_factor={scale}, add_offset={offset}: its values are "
                "stored numbers, not decoded")
    if np.issubdtype(cube.dtype, np.integer):
        return f"the cube is {cube.dtype} (stored integers, e.g. reflectance x 10000)"
    if np.issubdtype(stored, np.integer) and float(cube.encoding.get("scale_factor", 1.0)) == 1.0:
        return (f"the file stores {stored} values (e.g. reflectance x 10000) and has no scale tag "
                "to decode them")
    return None


def check_units(cube: xr.DataArray, endmembers: np.ndarray, *, strict: bool = False) -> None:
    """Warn (``strict``: raise :class:`InputError`) when :func:`units_problem` finds one."""
    why = units_problem(cube, endmembers)
    if why is None:
        return
    msg = (f"{why}, while the endmembers are at most 2 (reflectance 0-1): the abundances would be off "
           "by the scale factor. Give the file a scale (gdal_edit.py -scale 0.0001), open the cube "
           "with rioxarray.open_rasterio(..., mask_and_scale=True) where it has one, or put the "
           "endmembers in the cube's units.")
    if strict:
        raise InputError(msg)
    warn_user(msg)


def wavelength_tolerance(cube_wl: np.ndarray) -> float:
    """Largest band-centre difference (nm) taken as the same band: half the cube's median band
    spacing, at least 1 nm."""
    step = np.abs(np.diff(np.asarray(cube_wl, dtype=np.float64)))
    return max(1.0, 0.5 * float(np.median(step))) if step.size else 1.0


def check_wavelengths(cube_wl: np.ndarray | None, endmembers: xr.DataArray,
                      what: str = "the endmembers") -> None:
    """Raise :class:`WavelengthMismatchError` when both sides have wavelengths that disagree.

    Band ``i`` of the cube and of the endmembers must lie within :func:`wavelength_tolerance` of each
    other; a reversed order, another unit or another sensor fails, with the fix
    (:func:`xr_unmix.resample_spectra`). Nothing is checked when either side has no wavelengths.
    """
    if cube_wl is None or "wavelength" not in endmembers.coords:
        return
    e_wl = np.asarray(endmembers.coords["wavelength"].values, dtype=np.float64)
    c_wl = np.asarray(cube_wl, dtype=np.float64)
    if e_wl.shape != c_wl.shape or not (np.isfinite(e_wl).all() and np.isfinite(c_wl).all()):
        return
    diff = np.abs(e_wl - c_wl)
    tol = wavelength_tolerance(c_wl)
    if diff.max() <= tol:
        return
    i = int(diff.argmax())

    def span(w: np.ndarray) -> str:
        order = "ascending" if w[-1] >= w[0] else "descending"
        return f"{w[0]:.1f}-{w[-1]:.1f} nm, {order}"

    raise WavelengthMismatchError(
        f"{what}' wavelengths ({span(e_wl)}) do not match the cube's ({span(c_wl)}): band {i + 1} is "
        f"at {e_wl[i]:.1f} nm against {c_wl[i]:.1f} nm (tolerance {tol:.1f} nm); use "
        "xr_unmix.resample_spectra(endmembers, cube) to put the spectra on the cube's wavelengths")


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
            raise InputError(f"{len(nm)} names for {arr.shape[1]} endmembers")
        E = xr.DataArray(arr, dims=(BAND, ENDMEMBER), coords={ENDMEMBER: nm})
    values = np.asarray(E.values, dtype=np.float64)
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise InputError(f"the endmembers contain {bad} NaN/inf values; clean or resample them first")
    if n_bands is not None and values.shape[0] != n_bands:
        raise BandMismatchError(
            f"the endmembers have {values.shape[0]} bands but the cube has {n_bands}; "
            "use xr_unmix.resample_spectra to put the spectra on the cube's wavelengths"
        )
    if E.sizes[ENDMEMBER] < 1:
        raise InputError("no endmembers given")
    names_out = np.array([str(n) for n in E.coords[ENDMEMBER].values], dtype=object)
    blank = [i + 1 for i, n in enumerate(names_out) if not n.strip()]
    if blank:
        raise InputError(f"endmember {blank[0]} of {len(names_out)} has an empty name; name every "
                         "endmember (a CSV needs a header cell above each spectrum)")
    if len(set(names_out)) != len(names_out):
        raise InputError(f"endmember names must be unique; got {list(names_out)}")
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
    them. Attrs are built from scratch (the cube's ``long_name``, ``scale_factor`` etc. do not leak in):
    CF ``long_name``/``units``, the method's ``attrs`` and the input record of
    :func:`xr_unmix.metadata.input_record` (source file, bands and wavelengths used).
    """
    facts = facts or cube_facts(cube)
    coords: dict[str, Any] = {ENDMEMBER: np.array([str(n) for n in names], dtype=object)}
    for k, c in cube.coords.items():
        if set(c.dims) <= {Y, X} and k != "spatial_ref":
            coords[k] = c.variable
    out = xr.DataArray(data, dims=(ENDMEMBER, Y, X), coords=coords, name=name,
                       attrs={**cf_result_attrs(name),
                              **{k: _attr_value(v) for k, v in attrs.items()},
                              **input_record(cube)})
    rio = _rio(cube)
    if facts.crs is not None:
        out = out.rio.write_crs(facts.crs)
        try:
            out = out.rio.write_transform(rio.transform(recalc=False))
        except Exception:  # noqa: BLE001  (no transform recoverable: rioxarray recomputes from coords)
            pass
    return out
