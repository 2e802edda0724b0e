"""Reading cubes and writing abundance maps: Cloud-Optimized GeoTIFF and Zarr.

One module an idea:

- :mod:`~xr_unmix.io.read`: :func:`open_cube` (any supported file to a ready ``(band, y, x)`` cube,
  the format told from the content), :func:`open_abundance` (maps written here, back with their CRS);
- :mod:`~xr_unmix.io.gdal` (GeoTIFF/COG and any GDAL raster), :mod:`~xr_unmix.io.envi`,
  :mod:`~xr_unmix.io.emit` (EMIT L2A NetCDF, GLT orthorectification or swath),
  :mod:`~xr_unmix.io.enmap` (EnMAP L2A TIF + XML): one reader a format;
- :mod:`~xr_unmix.io.bands`: wavelengths, the good-band mask, bad bands and ignore windows;
- :mod:`~xr_unmix.io.cog` and :mod:`~xr_unmix.io.zarr`: :func:`to_cog`, :func:`to_zarr`;
- :mod:`~xr_unmix.io.write`: :func:`write`, several products from one computation;
- :mod:`~xr_unmix.io.bundles`: :func:`write_bundles`, the fraction and uncertainty of bundle unmixing;
- :mod:`~xr_unmix.io.atomic`: the one atomic-publish helper (products, batch sidecars, model files);
- :mod:`~xr_unmix.io._jobs`: what the writers share (a product as a staged job, the checks);
- :mod:`~xr_unmix.io._rowbands`: the writers' task order on local schedulers (output blocks top to
  bottom, a row at a time: peak memory of about two rows of blocks, not of the scene).

Writers stream a dask-backed result block by block (never the whole map in memory) and write to a
temporary sibling of the target, renamed into place only on success: an error or an interrupt leaves
nothing at the target path.
"""

from __future__ import annotations

from ..runtime import (  # noqa: F401  (GDAL options and compute_settled: public names kept here)
    GDAL_CACHE_MB,
    compute_settled,
    gdal_cache_bytes,
    gdal_env,
    gdal_options,
)
from .cog import to_cog
from .read import auto_chunk, open_abundance, open_cube, read_wavelengths
from .write import write
from .zarr import to_zarr, zarr_complete

__all__ = ["auto_chunk", "open_abundance", "open_cube", "read_wavelengths", "to_cog", "to_zarr",
           "write", "zarr_complete"]
