"""Writing a :func:`xr_unmix.bundles.bundles` result: ``fraction``, ``uncertainty`` (and MESMA's
``rmse``) as one COG or Zarr store each, computed together once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from ..errors import InputTypeError, ParameterError
from ._jobs import COG_SUFFIXES, ZARR_SUFFIXES, run
from .cog import cog_job
from .zarr import zarr_job


def bundle_paths(path: Any, variables: Sequence[str] = ("fraction", "uncertainty")) -> dict[str, Any]:
    """Where :func:`write_bundles` puts each variable: ``fraction`` at ``path``, the others at
    ``<stem>_<variable><suffix>`` (``fractions.tif`` -> ``fractions_uncertainty.tif``)."""
    p = Path(path)
    return {v: p if v == "fraction" else p.with_name(f"{p.stem}_{v}{p.suffix}") for v in variables}


def write_bundles(result: xr.Dataset, path: Any, *, overwrite: bool = False,
                  require_crs: bool = False, progress: bool = False) -> list[Any]:
    """Write a :func:`bundles` result: one COG (``.tif``) or Zarr store (``.zarr``) per variable.

    ``fraction`` goes to ``path``, ``uncertainty`` (and MESMA's ``rmse``, and ``n_endmembers`` with several set sizes) beside it
    (:func:`bundle_paths`); class names are the band descriptions and band tags, the parameters the
    dataset tags / attributes (:mod:`xr_unmix.metadata`). All are computed together, once, and each
    is published atomically as :func:`xr_unmix.to_cog` / :func:`xr_unmix.to_zarr` publish theirs.

    Returns
    -------
    list of Path, in the order fraction, uncertainty[, rmse[, n_endmembers]].
    """
    from pathlib import Path


    if not isinstance(result, xr.Dataset) or "fraction" not in result:
        raise InputTypeError(f"expected the Dataset of bundles() (fraction, uncertainty), got "
                             f"{type(result).__name__}")
    names = [v for v in ("fraction", "uncertainty", "rmse", "n_endmembers") if v in result]
    suffix = Path(path).suffix.lower()
    if suffix not in COG_SUFFIXES + ZARR_SUFFIXES:
        raise ParameterError(f"output {path}: use a .tif (Cloud-Optimized GeoTIFF) or .zarr "
                             "path").about("out")
    kind = "cog" if suffix in COG_SUFFIXES else "zarr"
    jobs = []
    for var, p in bundle_paths(path, names).items():
        arr = result[var].copy()
        arr.attrs = {**result.attrs, **arr.attrs}
        jobs.append(cog_job(arr, p, overwrite=overwrite, require_crs=require_crs) if kind == "cog"
                    else zarr_job(arr, p, overwrite=overwrite, require_crs=require_crs))
    return run(jobs, progress=progress)
