"""``xr_unmix.write``: several products of one result, the estimator computed once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xarray as xr

from ..errors import ParameterError
from ._jobs import COG_SUFFIXES, Job, PathLike, check_suffix, run
from .cog import cog_job
from .read import open_abundance
from .zarr import zarr_job


def write(abundance: xr.DataArray, *, cog: PathLike | None = None, zarr: PathLike | None = None,
          quality: xr.DataArray | None = None, endmembers: Any = None, overwrite: bool = False,
          require_crs: bool = False, progress: bool = False, zarr_format: int = 3) -> list[Path]:
    """Write several products of one result, running the estimator once.

    ``to_cog(ab, ...)`` then ``to_zarr(ab, ...)`` runs a lazy (dask-backed) estimator twice, and a
    quality layer a third time. Here the result is computed once, into the first product (the Zarr
    store when one is asked for, else the COG); the other products and the quality layers are then
    made from that written product, lazily and tile by tile. Each product is published atomically as
    :func:`xr_unmix.to_cog` / :func:`xr_unmix.to_zarr` publish theirs.

    Parameters
    ----------
    abundance : DataArray (endmember, y, x)
    cog : str or path, optional
        Cloud-Optimized GeoTIFF (``.tif``), as :func:`xr_unmix.to_cog` writes it.
    zarr : str or path, optional
        Zarr store (``.zarr``), as :func:`xr_unmix.to_zarr` writes it (``zarr_format`` 3 or 2).
    quality : DataArray (band, y, x), optional
        The cube that was unmixed: also write its per-pixel reconstruction RMSE (cube units) beside
        each product, as ``<stem>_rmse.tif`` / ``<stem>_rmse.zarr``. Needs ``endmembers``.
    endmembers : DataArray (band, endmember) or array (bands, R), optional
        The endmembers used (for ``quality``).
    overwrite, require_crs, progress
        As in :func:`xr_unmix.to_cog`.

    Returns
    -------
    list of Path
        The written paths: the COG, the Zarr store, then their quality layers.
    """
    if cog is None and zarr is None:
        raise ParameterError("write() needs cog= and/or zarr= (the paths to write)")
    if quality is not None and endmembers is None:
        raise ParameterError("quality= needs endmembers= (the spectra the map was unmixed with)")
    kw = {"overwrite": overwrite, "require_crs": require_crs}
    cog_p = None if cog is None else Path(cog)
    zarr_p = None if zarr is None else Path(zarr)
    # every check that needs no computation first (suffixes, dims, options)
    first = (zarr_job(abundance, zarr_p, zarr_format=zarr_format, **kw) if zarr_p is not None
             else cog_job(abundance, cog_p, **kw))
    if zarr_p is not None and cog_p is not None:
        check_suffix(cog_p, COG_SUFFIXES, "Cloud-Optimized GeoTIFF")
    run([first], progress=progress)  # the one computation of the estimator
    chunks = abundance.chunksizes
    tile = {"y": chunks["y"][0], "x": chunks["x"][0]} if chunks else None
    written = open_abundance(first.target, chunks=tile) if zarr_p is None else \
        open_abundance(first.target)
    written = written.assign_coords(y=abundance.y.values, x=abundance.x.values)
    written.attrs = dict(abundance.attrs)
    jobs: list[Job] = []
    if zarr_p is not None and cog_p is not None:
        jobs.append(cog_job(written, cog_p, **kw))
    if quality is not None:
        from ..metrics import reconstruction_error

        err = reconstruction_error(quality, endmembers, written).rio.write_crs(
            written.rio.crs) if written.rio.crs is not None else reconstruction_error(
            quality, endmembers, written)
        for p in (cog_p, zarr_p):
            if p is None:
                continue
            q = p.with_name(p.stem + "_rmse" + p.suffix)
            jobs.append(cog_job(err, q, **kw) if p is cog_p else
                        zarr_job(err, q, zarr_format=zarr_format, **kw))
    run(jobs, progress=progress)
    out = [p for p in (cog_p, zarr_p) if p is not None]
    return out + [j.target for j in jobs if j.target not in out]
