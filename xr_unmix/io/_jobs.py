"""The writers behind :func:`xr_unmix.to_cog`, :func:`xr_unmix.to_zarr` and :func:`xr_unmix.write`.

Each product is a :class:`Job`: ``stage`` writes its metadata into a temporary target and returns the
pending Dask computation of its data (``None`` when the data were in memory and are written already);
``finalize`` completes it once the data are in (the COG copy with overviews). :func:`run` stages every
job, computes all pending writes together -- one pass over a dask-backed result however many products
read it: the estimator's tasks are shared keys of one graph -- then finalizes them and publishes each
through :func:`xr_unmix.io.atomic.atomic_target` (nothing at a target path unless every product is whole).
On local schedulers the computation runs in bands of chunk rows, top to bottom
(:mod:`xr_unmix.io._rowbands`): its peak memory is that of a band, not of the scene.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import DimensionError, MissingCRSError, ParameterError
from ..runtime import compute_settled, gdal_env
from . import atomic as _atomic
from ._rowbands import RowBands

PathLike = str | os.PathLike[str]

COG_SUFFIXES = (".tif", ".tiff")
ZARR_SUFFIXES = (".zarr",)


@dataclass
class Job:
    """One product to write: see the module docstring."""

    target: Path
    kind: str
    overwrite: bool
    stage: Callable[[Path], Any]
    finalize: Callable[[Path], None] = lambda tmp: None
    cleanup: list[Path] = field(default_factory=list)


def check_suffix(path: Path, allowed: Sequence[str], what: str) -> None:
    """Refuse a path whose suffix says another format (``to_cog(ab, "x.zarr")``)."""
    if path.suffix.lower() not in allowed:
        other = {".zarr": "to_zarr", ".tif": "to_cog", ".tiff": "to_cog"}.get(path.suffix.lower())
        hint = f" (a {path.suffix} path is written by {other})" if other else ""
        raise ParameterError(f"{path}: a {what} is written to a path ending in "
                             f"{' or '.join(allowed)}, not {path.suffix or 'no suffix'!r}{hint}")


def spatial_yx(arr: xr.DataArray) -> xr.DataArray:
    """``arr`` with its spatial dims named ``y``/``x``: a result of ``cube.unmix.f(..., dims=...)``
    has the input's names (``(endmember, lat, lon)``), its last two dims."""
    if {"y", "x"} <= set(arr.dims) or arr.ndim not in (2, 3) or {"y", "x"} & set(arr.dims):
        return arr
    return arr.rename({arr.dims[-2]: "y", arr.dims[-1]: "x"})


def as_layers(arr: xr.DataArray) -> tuple[xr.DataArray, list[str]]:
    """Return ``arr`` as ``(layer, y, x)`` and the layer names (spatial dims named otherwise, the
    last two, are renamed ``y``/``x``: :func:`spatial_yx`)."""
    if not isinstance(arr, xr.DataArray):
        raise TypeError(f"expected an xarray.DataArray, got {type(arr).__name__}")
    arr = spatial_yx(arr)
    if arr.ndim == 2 and set(arr.dims) == {"y", "x"}:
        name = str(arr.name or "layer")
        return arr.expand_dims(layer=[name]).transpose("layer", "y", "x"), [name]
    if arr.ndim == 3 and {"y", "x"} <= set(arr.dims):
        lead = next(d for d in arr.dims if d not in ("y", "x"))
        names = [str(v) for v in arr[lead].values] if lead in arr.coords else [
            f"{lead}{i}" for i in range(arr.sizes[lead])]
        return arr.transpose(lead, "y", "x"), names
    raise DimensionError(f"expected dims (endmember, y, x) or (y, x); got {tuple(arr.dims)}")


def check_crs(arr: xr.DataArray, require_crs: bool, path: Path) -> None:
    import rioxarray  # noqa: F401

    if arr.rio.crs is None:
        if require_crs:
            raise MissingCRSError(f"{path}: the data has no CRS (write one with .rio.write_crs)")
        from .._warn import warn_user

        warn_user(f"{path}: writing without a CRS (the input had none)")


def check_grid(arr: xr.DataArray, path: Path) -> None:
    """Raise unless ``x`` and ``y`` are strictly monotonic and evenly spaced (a GeoTIFF's grid).

    A GeoTIFF stores a regular grid (one transform): shuffled, repeated or unevenly spaced coordinates
    would put the columns or rows in the wrong place without any sign of it.
    """
    for dim in ("y", "x"):
        if dim not in arr.coords or arr.sizes[dim] < 2:
            continue
        c = np.asarray(arr[dim].values, dtype=np.float64)
        step = np.diff(c)
        if not (np.all(step > 0) or np.all(step < 0)):
            kind = "repeated" if np.any(step == 0) else "not monotonic"
            raise DimensionError(f"{path}: the {dim} coordinates are {kind}, so they do not form the "
                                 f"regular grid a GeoTIFF stores; sort them (.sortby('{dim}')) and "
                                 "drop duplicates first, or write Zarr (to_zarr keeps any coordinates)")
        if np.max(np.abs(step - step.mean())) > 1e-6 * max(abs(step.mean()), 1e-12) + 1e-9:
            raise DimensionError(f"{path}: the {dim} coordinates are not evenly spaced (steps "
                                 f"{step.min():g} to {step.max():g}), so they do not form the regular "
                                 "grid a GeoTIFF stores; reproject (rio.reproject) or write Zarr")


def north_up(arr: xr.DataArray) -> xr.DataArray:
    """``arr`` flipped to north-up when its grid is south-up (``y`` increasing, no rotation).

    A south-up GeoTIFF is legal but many viewers and tile servers draw it upside down; the flip keeps
    every pixel's coordinates (the transform is rewritten for the flipped rows).
    """
    import rioxarray  # noqa: F401
    from affine import Affine

    if "y" not in arr.coords or arr.sizes["y"] < 2:
        return arr
    y = np.asarray(arr["y"].values, dtype=np.float64)
    if not y[1] > y[0]:
        return arr
    try:
        t = arr.rio.transform(recalc=False)
    except Exception:  # noqa: BLE001  (no transform: rioxarray rebuilds it from the flipped coords)
        t = None
    out = arr.isel(y=slice(None, None, -1))
    if t is not None and t.b == 0 and t.d == 0 and t.e > 0:
        h = arr.sizes["y"]
        out = out.rio.write_transform(Affine(t.a, 0.0, t.c, 0.0, -t.e, t.f + t.e * h))
    elif arr.rio.crs is not None:
        out = out.rio.write_transform(out.rio.transform(recalc=True))
    return out


def _progress(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """A tqdm bar over the tasks, for local schedulers (under ``distributed``: its dashboard).

    :class:`xr_unmix._progress.DaskProgress`: a widget in Jupyter (with ``ipywidgets``, the
    ``notebook`` extra), a text bar on a terminal; a finished bar leaves no line behind, nor
    anything in a saved notebook.
    """
    if not enabled:
        return contextlib.nullcontext()
    try:
        from distributed import get_client

        get_client()
        return contextlib.nullcontext()
    except (ImportError, ValueError):
        from .._progress import DaskProgress

        return DaskProgress(desc="xr_unmix: computing and writing")


def _all_done(*_: Any) -> None:
    return None


def run(jobs: Sequence[Job], *, progress: bool = False) -> list[Path]:
    """Stage, compute (once, together), finalize and publish ``jobs``; return their target paths."""
    targets = [j.target for j in jobs]
    if len(set(targets)) != len(targets):
        raise ParameterError(f"two products would be written to the same path: {targets}")
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(_atomic.atomic_target(j.target, overwrite=j.overwrite,
                                                          kind=j.kind)) for j in jobs]
        try:
            with gdal_env(), _progress(progress), warnings.catch_warnings():
                # zarr's note that consolidated metadata is a v3 extension: readers without it ignore it
                warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
                pending = [p for j, t in zip(jobs, tmps, strict=True) if (p := j.stage(t)) is not None]
                if pending:
                    import dask
                    from dask.core import flatten

                    obj = pending[0] if len(pending) == 1 else dask.delayed(_all_done)(*pending)
                    # top to bottom, a row of output blocks at a time (_rowbands; local schedulers)
                    with RowBands(keys=flatten(obj.__dask_keys__())):
                        compute_settled(obj)
            for j, t in zip(jobs, tmps, strict=True):
                j.finalize(t)
        finally:
            for j in jobs:
                for p in j.cleanup:
                    _atomic._remove(p)
    return targets
