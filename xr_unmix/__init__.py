"""xr_unmix: hyperspectral unmixing for xarray, rioxarray and Dask.

``import xr_unmix`` registers the ``unmix`` accessor on :class:`xarray.DataArray` and changes nothing
else (``da.unmix.plot()`` titles a plot without ``spatial_ref = 0``, :mod:`xr_unmix._plotting`):
torch, rasterio and the models are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import accessor as _accessor  # noqa: F401  (registers DataArray.unmix)
from .api import admm, apply_model, deq, fcls, ls, nnls, sunsal
from .errors import (
    BandMismatchError,
    ConvergenceWarning,
    DimensionError,
    MissingCRSError,
    ModelFileError,
    XrUnmixError,
)

__version__ = "0.1.0"

_LAZY = {
    "UADMMNet": "models.uadmm",
    "MNNAE": "models.mnnae",
    "DEQUnmix": "models.deq",
    "load_model": "models.registry",
    "simulate": "simulate",
    "to_cog": "io",
    "to_zarr": "io",
    "write": "io",
    "open_cube": "io",
    "open_abundance": "io",
    "conform_cube": "_dims",
    "DEFAULT_IGNORE_REGIONS": "io.bands",
    "read_endmembers": "endmembers",
    "resample_spectra": "endmembers",
    "vca": "extraction",
    "extract_endmembers": "extraction",
    "estimate_n_endmembers": "extraction",
    "write_bundles": "io.bundles",
    "stac_item": "io.stac",
    "plot": "_plotting",
}
_SUBMODULES = {"metrics", "solvers", "models", "tiling", "datasets", "io", "extraction", "testing",
               "endmembers", "simulate", "batch", "library", "metadata", "pipeline", "cli", "bundles"}

__all__ = [
    "BandMismatchError", "ConvergenceWarning", "DimensionError", "MissingCRSError", "ModelFileError",
    "XrUnmixError", "__version__", "admm", "apply_model", "deq", "fcls", "ls", "nnls", "sunsal",
    *sorted(_LAZY), "metrics",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'xr_unmix' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The eager names plus the lazily loaded ones (so that ``dir(xr_unmix)`` and tab completion
    list ``to_cog``, ``write``, ``open_cube``, ... before their first use)."""
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
