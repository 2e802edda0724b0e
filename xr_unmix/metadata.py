"""Product metadata: what a written map needs to be trusted, and the CF attributes readers expect.

:func:`input_record` collects, when a result is made, the identity of the input cube (its source file)
and the bands used (count, wavelengths). :func:`product_attrs` adds, when a product is written, the
endmember names and classes, the software version and the date. :func:`cf_result_attrs` gives the
variable its CF ``long_name``/``units`` (so that ``ab.plot()`` labels itself) and
:func:`with_cf_coords` writes the CF ``grid_mapping`` and the ``x``/``y`` ``units``/``standard_name``
that GDAL, QGIS and ``xr.open_zarr(..., decode_coords="all")`` read (through rioxarray's
``write_coordinate_system``).

GeoTIFF tags are strings; :func:`as_tags` flattens the same record for them, and :func:`band_tags`
gives the per-band record (endmember name, class, units).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

#: attribute names of the provenance record (Zarr attributes, GeoTIFF dataset tags)
INPUT_SOURCE = "input_source"
INPUT_BANDS = "input_bands"
INPUT_WAVELENGTHS = "input_wavelengths_nm"


def _source_of(cube: xr.DataArray) -> str | None:
    src = cube.encoding.get("source") or cube.attrs.get(INPUT_SOURCE)
    return None if src is None else os.fspath(src)


def input_record(cube: xr.DataArray) -> dict[str, Any]:
    """The input's identity and the bands used, as result attributes.

    Parameters
    ----------
    cube : DataArray (band, y, x)

    Returns
    -------
    dict
        ``input_source`` (the file the cube was read from, when known), ``input_bands`` (count) and
        ``input_wavelengths_nm`` (a list of floats, when the cube has a ``wavelength`` coordinate).
    """
    rec: dict[str, Any] = {INPUT_BANDS: int(cube.sizes.get("band", 0))}
    src = _source_of(cube)
    if src is not None:
        rec[INPUT_SOURCE] = src
    if "wavelength" in cube.coords and cube.coords["wavelength"].dims == ("band",):
        wl = np.asarray(cube.coords["wavelength"].values, dtype=np.float64)
        rec[INPUT_WAVELENGTHS] = [round(float(w), 4) for w in wl]
    return rec


def cf_result_attrs(kind: str = "abundance") -> dict[str, str]:
    """CF ``long_name`` and ``units`` of a result variable (abundance fractions are unitless, ``1``)."""
    return {"long_name": kind.replace("_", " "), "units": "1"}


def software_version() -> str:
    from . import __version__

    return f"xr_unmix {__version__}"


def _layer_coord(arr: xr.DataArray, name: str) -> list[str] | None:
    lead = [d for d in arr.dims if d not in ("y", "x")]
    if not lead:
        return None
    for c in arr.coords.values():
        if c.name == name and c.dims == (lead[0],):
            return [str(v) for v in c.values]
    return None


def product_attrs(arr: xr.DataArray, *, date: str | None = None) -> dict[str, Any]:
    """The provenance record of a product about to be written.

    The result's own attrs (method and parameters, input source, bands and wavelengths, set by the
    estimators) plus ``endmembers`` and ``classes`` (when the result has a ``class`` coordinate),
    ``software`` (``xr_unmix <version>``), ``date_created`` (UTC, ISO 8601) and a CF
    ``history`` line.
    """
    rec: dict[str, Any] = {k: v for k, v in arr.attrs.items()
                           if k not in ("_FillValue", "scale_factor", "add_offset", "grid_mapping")}
    names = _layer_coord(arr, str(next((d for d in arr.dims if d not in ("y", "x")), "")))
    if names is not None:
        rec["endmembers"] = names
    classes = _layer_coord(arr, "class")
    if classes is not None:
        rec["classes"] = classes
    rec["software"] = software_version()
    stamp = date or _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace(
        "+00:00", "Z")
    rec["date_created"] = stamp
    method = rec.get("method")
    rec["history"] = f"{stamp} {rec['software']}" + (f" {method}" if method else "")
    return rec


def _tag_value(v: Any) -> str:
    if isinstance(v, list | tuple | np.ndarray):
        return ",".join(str(x) for x in v)
    if isinstance(v, Mapping):
        return json.dumps(v, default=str)
    return str(v)


def as_tags(rec: Mapping[str, Any]) -> dict[str, str]:
    """The record as GeoTIFF dataset tags (strings; lists comma-separated)."""
    return {str(k): _tag_value(v) for k, v in rec.items() if k not in ("long_name", "units")}


def zarr_attrs(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The record as JSON-safe Zarr attributes (lists stay lists)."""
    out: dict[str, Any] = {}
    for k, v in rec.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, tuple):
            v = list(v)
        out[str(k)] = v
    return out


def band_tags(arr: xr.DataArray) -> list[dict[str, str]]:
    """Per-band GeoTIFF tags of a ``(layer, y, x)`` product: its name and, when known, its class."""
    lead = arr.dims[0]
    names = _layer_coord(arr, str(lead)) or [f"{lead}{i}" for i in range(arr.sizes[lead])]
    classes = _layer_coord(arr, "class")
    out = []
    for i, n in enumerate(names):
        t = {str(lead): n}
        if classes is not None:
            t["class"] = classes[i]
        out.append(t)
    return out


def with_cf_coords(arr: xr.DataArray) -> xr.DataArray:
    """``arr`` with CF spatial metadata: ``grid_mapping`` and ``x``/``y`` ``units``/``standard_name``.

    Through rioxarray (``write_grid_mapping`` and ``write_coordinate_system``: projected CRSs get
    ``projection_x_coordinate`` in ``metre``, geographic ones ``longitude``/``degrees_east``). An array
    without a CRS is returned unchanged.
    """
    import rioxarray  # noqa: F401

    if arr.rio.crs is None:
        return arr
    out = arr.rio.write_grid_mapping("spatial_ref")
    if "x" in out.coords and "y" in out.coords:
        out = out.rio.write_coordinate_system()
    return out
