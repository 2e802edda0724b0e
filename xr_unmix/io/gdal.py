"""GDAL rasters through rioxarray: the one place that opens them as cubes (scale/offset decoded,
nodata as NaN, chunks), for :func:`~xr_unmix.io.read.open_cube` and the product readers."""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

PathLike = str | os.PathLike[str]


def auto_chunk(n_bands: int, itemsize: int = 4, *, target_mb: float = 64.0) -> int:
    """Spatial chunk side (px) so that one ``(n_bands, side, side)`` chunk is about ``target_mb`` MB.

    A multiple of 256 when that fits, else of 64 (at least 64): 256 for 200 float32 bands (52 MB),
    512 for 60 bands. Used by ``open_cube(chunks="auto")``.
    """
    side = int((target_mb * 2**20 / (max(1, n_bands) * itemsize)) ** 0.5)
    return side // 256 * 256 if side >= 256 else max(64, side // 64 * 64)


def band_floats(path: PathLike, key: str) -> np.ndarray | None:
    """Per-band GDAL metadata ``key`` as floats when every band has it, else None."""
    import rasterio

    with rasterio.open(path) as src:
        vals = [src.tags(b).get(key) for b in range(1, src.count + 1)]
    try:
        return np.array([float(v) for v in vals], dtype=np.float64) if all(vals) else None
    except (TypeError, ValueError):
        return None


def open_gdal(path: PathLike, *, chunks: dict[str, int] | int | str | None,
               masked: bool) -> xr.DataArray:
    """A GDAL raster through rioxarray: GDAL scale/offset decoded, nodata as NaN (``masked``)."""
    import rioxarray

    if chunks == "auto":
        import rasterio

        try:
            with rasterio.open(path) as src:
                n, itemsize = src.count, max(np.dtype(d).itemsize for d in src.dtypes)
        except Exception as exc:
            raise OSError(f"cannot open {path} as a raster: {exc}") from exc
        chunks = auto_chunk(n, max(itemsize, 4))
    elif isinstance(chunks, str):
        raise ValueError(f"chunks must be an int, a dict, 'auto' or None; got {chunks!r}")
    if isinstance(chunks, int):
        chunks = {"y": chunks, "x": chunks}
    ch = None if chunks is None else {"band": -1, **chunks}
    try:
        if masked and _nothing_to_mask(path):
            masked, moved = False, True
        else:
            moved = False
        # lock=False: with chunks, every read opens its own handle, so Dask's threads read in parallel
        # (the default lock serialises the reads of a file within a process)
        scaled = _has_scale(path)
        cube = rioxarray.open_rasterio(path, chunks=ch, masked=masked or scaled,
                                       mask_and_scale=scaled,
                                       **({"lock": False} if ch is not None else {}))
    except Exception as exc:  # rasterio raises its own hierarchy; name the file
        raise OSError(f"cannot open {path} as a raster: {exc}") from exc
    if moved and isinstance(cube, xr.DataArray) and "_FillValue" in cube.attrs:
        cube.encoding["_FillValue"] = cube.attrs.pop("_FillValue")
    if isinstance(cube, list | xr.Dataset):
        raise ValueError(f"{path} holds several subdatasets; open the one with the cube")
    return cube


def _has_scale(path: PathLike) -> bool:
    """True if any band of ``path`` has a GDAL scale other than 1 or an offset other than 0.

    Such files (e.g. reflectance stored as ``uint16`` x 10000 with scale 1e-4) are decoded to physical
    values, as rioxarray's ``mask_and_scale=True`` does, so that they match endmember spectra.
    """
    import rasterio

    with rasterio.open(path) as src:
        return any((s not in (None, 1.0)) for s in src.scales) or any(
            (o not in (None, 0.0)) for o in src.offsets)


def _nothing_to_mask(path: PathLike) -> bool:
    """True if every band of ``path`` is floating point with nodata NaN or unset."""
    import rasterio

    with rasterio.open(path) as src:
        if src.subdatasets and not src.count:
            return False
        return all(np.dtype(dt).kind == "f" for dt in src.dtypes) and all(
            v is None or np.isnan(v) for v in src.nodatavals)
