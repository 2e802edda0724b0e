"""The writers behind :func:`xr_unmix.to_cog`, :func:`xr_unmix.to_zarr` and :func:`xr_unmix.write`.

Each product is a :class:`Job`: ``stage`` writes its metadata into a temporary target and returns the
pending Dask computation of its data (``None`` when the data were in memory and are written already);
``finalize`` completes it once the data are in (the COG copy with overviews). :func:`run` stages every
job, computes all pending writes together -- one pass over a dask-backed result however many products
read it: the estimator's tasks are shared keys of one graph -- then finalizes them and publishes each
through :func:`xr_unmix._atomic.atomic_target` (nothing at a target path unless every product is whole).
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

from . import _atomic, metadata
from .errors import DimensionError, MissingCRSError, ParameterError
from .runtime import compute_settled, gdal_env

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


def as_layers(arr: xr.DataArray) -> tuple[xr.DataArray, list[str]]:
    """Return ``arr`` as ``(layer, y, x)`` and the layer names."""
    if not isinstance(arr, xr.DataArray):
        raise TypeError(f"expected an xarray.DataArray, got {type(arr).__name__}")
    if arr.ndim == 2 and set(arr.dims) == {"y", "x"}:
        name = str(arr.name or "layer")
        return arr.expand_dims(layer=[name]).transpose("layer", "y", "x"), [name]
    if arr.ndim == 3 and {"y", "x"} <= set(arr.dims):
        lead = next(d for d in arr.dims if d not in ("y", "x"))
        names = [str(v) for v in arr[lead].values] if lead in arr.coords else [
            f"{lead}{i}" for i in range(arr.sizes[lead])]
        return arr.transpose(lead, "y", "x"), names
    raise DimensionError(f"expected dims (endmember, y, x) or (y, x); got {tuple(arr.dims)}")


def check_crs(arr: xr.DataArray, require_crs: bool, path: Path, stacklevel: int = 4) -> None:
    import rioxarray  # noqa: F401

    if arr.rio.crs is None:
        if require_crs:
            raise MissingCRSError(f"{path}: the data has no CRS (write one with .rio.write_crs)")
        warnings.warn(f"{path}: writing without a CRS (the input had none)", UserWarning,
                      stacklevel=stacklevel)


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
    """Dask's progress bar for local schedulers (silent under ``distributed``, so not shown there)."""
    if not enabled:
        return contextlib.nullcontext()
    try:
        from distributed import get_client

        get_client()
        return contextlib.nullcontext()
    except (ImportError, ValueError):
        from dask.diagnostics import ProgressBar

        return ProgressBar()


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
                if len(pending) == 1:
                    compute_settled(pending[0])
                elif pending:
                    import dask

                    compute_settled(dask.delayed(_all_done)(*pending))
            for j, t in zip(jobs, tmps, strict=True):
                j.finalize(t)
        finally:
            for j in jobs:
                for p in j.cleanup:
                    _atomic._remove(p)
    return targets


# -- COG -------------------------------------------------------------------------------------------

def _overview_factors(width: int, height: int, blocksize: int) -> list[int]:
    """Overview decimation factors the COG driver would make: 2, 4, ... until the image fits a block."""
    factors: list[int] = []
    f = 1
    while -(-max(width, height) // f) > blocksize:
        f *= 2
        factors.append(f)
    return factors


def _write_tags(gtiff: Path, arr: xr.DataArray) -> None:
    """Provenance as dataset tags, name/class as band tags, units per band (GDAL metadata)."""
    import rasterio

    rec = metadata.product_attrs(arr)
    units = str(arr.attrs.get("units", "1"))
    with rasterio.open(gtiff, "r+") as ds:
        ds.update_tags(**metadata.as_tags(rec))
        for i, tags in enumerate(metadata.band_tags(arr), start=1):
            ds.update_tags(i, **tags)
            ds.set_band_unit(i, units)


def cog_job(abundance: xr.DataArray, path: PathLike, *, compress: str = "DEFLATE",
            level: int | None = None, blocksize: int = 256, overview_resampling: str = "average",
            overwrite: bool = False, require_crs: bool = False) -> Job:
    """The :class:`Job` of :func:`xr_unmix.io.to_cog` (parameters as there)."""
    import rioxarray  # noqa: F401

    path = Path(path)
    check_suffix(path, COG_SUFFIXES, "Cloud-Optimized GeoTIFF")
    codec = compress.upper()
    extra: dict[str, Any] = {"predictor": 3} if codec in ("DEFLATE", "ZSTD", "LZW") else {}
    if codec in ("DEFLATE", "ZSTD"):
        extra["level"] = 1 if level is None else int(level)
    elif level is not None:
        raise ParameterError(f"level applies to DEFLATE and ZSTD, not {compress}")
    arr, names = as_layers(abundance)
    check_crs(arr, require_crs, path, stacklevel=5)
    arr = north_up(arr.astype(np.float32))
    keep = {k: v for k, v in arr.attrs.items() if k not in ("_FillValue", "scale_factor", "add_offset")}
    arr = arr.copy()
    arr.attrs = {"long_name": tuple(names)}  # band descriptions; the rest goes in as GDAL tags
    arr.encoding = {}
    arr = arr.rio.write_nodata(np.nan, encoded=False)
    if arr.chunks is not None:
        # tile-aligned write blocks: multiples of the GeoTIFF block size
        step = max(blocksize, (max(arr.chunks[1]) // blocksize) * blocksize)
        arr = arr.chunk({arr.dims[0]: -1, "y": step, "x": step})
    check_grid(arr, path)
    tagged = arr.copy()
    tagged.attrs = keep
    job = Job(path, "cog", overwrite, stage=lambda tmp: None)

    def scratch_of(tmp: Path) -> Path:
        return tmp.with_name(tmp.name + ".d")

    def stage(tmp: Path) -> Any:
        scratch = scratch_of(tmp)
        scratch.mkdir()
        job.cleanup.append(scratch)
        # the scratch GTiff is read once by the COG copy: uncompressed is 5x faster to write under
        # the lock; past 4 GiB, fast ZSTD keeps the scratch file small
        opts = ({"compress": "NONE"} if arr.nbytes <= 4 * 2**30 else
                {"compress": "ZSTD", "zstd_level": 1})
        return arr.rio.to_raster(scratch / "stream.tif", driver="GTiff", tiled=True,
                                 blockxsize=blocksize, blockysize=blocksize, BIGTIFF="IF_SAFER",
                                 **opts, lock=True if arr.chunks is not None else None,
                                 compute=False)

    def finalize(tmp: Path) -> None:
        import rasterio
        import rasterio.shutil
        from rasterio.enums import Resampling

        gtiff = scratch_of(tmp) / "stream.tif"
        _write_tags(gtiff, tagged)
        with gdal_env(GDAL_NUM_THREADS="ALL_CPUS"):
            # overviews built inside the (uncompressed) scratch file, which the COG driver then copies
            # with the rest: 0.25 s of CPU for 2048² x 5 instead of ~0.6 s when the COG driver makes
            # them itself. Same levels as the driver: halve until the image fits in one block.
            factors = _overview_factors(arr.sizes["x"], arr.sizes["y"], blocksize)
            method = Resampling.__members__.get(overview_resampling.lower())
            if factors and method is not None:  # else the COG driver makes them
                with rasterio.open(gtiff, "r+") as ds:
                    ds.build_overviews(factors, method)
            rasterio.shutil.copy(gtiff, tmp, driver="COG", compress=compress, blocksize=blocksize,
                                 overview_resampling=overview_resampling, BIGTIFF="IF_SAFER", **extra)

    job.stage, job.finalize = stage, finalize
    return job


# -- Zarr ------------------------------------------------------------------------------------------

def _regular_chunks(chunks: Sequence[int]) -> bool:
    return all(c == chunks[0] for c in chunks[:-1]) and chunks[-1] <= chunks[0]


def zarr_job(abundance: xr.DataArray, store: PathLike, *, name: str | None = None,
             chunks: int | None = None, level: int = 1, zarr_format: int = 3,
             overwrite: bool = False, require_crs: bool = False) -> Job:
    """The :class:`Job` of :func:`xr_unmix.io.to_zarr` (parameters as there)."""
    import rioxarray  # noqa: F401

    store = Path(store)
    check_suffix(store, ZARR_SUFFIXES, "Zarr store")
    if zarr_format not in (2, 3):
        raise ParameterError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    arr = abundance
    if not isinstance(arr, xr.DataArray):
        raise TypeError(f"expected an xarray.DataArray, got {type(arr).__name__}")
    as_layers(arr)  # validates dims
    check_crs(arr, require_crs, store, stacklevel=5)
    var = name or (str(arr.name) if arr.name is not None else "abundance")
    arr = arr.copy()
    arr.attrs = {k: v for k, v in arr.attrs.items() if k != "_FillValue"}
    arr.encoding = {}
    if chunks is not None:
        arr = arr.chunk({"y": chunks, "x": chunks})
    elif arr.chunks is None:
        arr = arr.chunk({"y": 512, "x": 512})
    else:
        cy, cx = arr.chunks[arr.get_axis_num("y")], arr.chunks[arr.get_axis_num("x")]
        if not (_regular_chunks(cy) and _regular_chunks(cx)):
            arr = arr.chunk({"y": max(cy), "x": max(cx)})
    for d in arr.dims:
        if d not in ("y", "x"):
            arr = arr.chunk({d: -1})
    for c in list(arr.coords):
        if c != "spatial_ref" and arr[c].dtype.kind in "UO":  # names: variable-length UTF-8
            arr = arr.assign_coords({c: (arr[c].dims, np.array([str(v) for v in
                                                                 arr[c].values.ravel()],
                                                                dtype=object).reshape(arr[c].shape))})
    arr = metadata.with_cf_coords(arr)
    arr.attrs = metadata.zarr_attrs(metadata.product_attrs(arr))
    ds = arr.to_dataset(name=var)
    enc = ds[var].encoding
    enc["_FillValue"] = np.float32(np.nan) if arr.dtype == np.float32 else np.nan
    if zarr_format == 3:
        from zarr.codecs import ZstdCodec

        enc["compressors"] = [ZstdCodec(level=int(level))]
    else:
        from numcodecs import Zstd

        enc["compressors"] = [Zstd(level=int(level))]
    if arr.rio.crs is not None:
        enc["grid_mapping"] = "spatial_ref"

    def stage(tmp: Path) -> Any:
        # consolidated: ``xr.open_zarr(store, decode_coords="all")`` opens it without xarray's
        # "failed to open with consolidated metadata" warning. Every chunk is written, all-NaN ones
        # included (zarr skips them by default): a resume then tells a complete store from one with
        # a chunk missing (see xr_unmix.io.zarr_complete)
        return ds.to_zarr(tmp, zarr_format=zarr_format, consolidated=True, mode="w-",
                          compute=False, write_empty_chunks=True)

    return Job(store, "zarr", overwrite, stage=stage)

