"""Reading: hyperspectral cubes from GDAL rasters, and abundance maps written by this package."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import xarray as xr

PathLike = str | os.PathLike[str]


# -- reading ----------------------------------------------------------------------------------------

def _parse_wavelengths(text: str) -> list[float]:
    return [float(v) for v in text.replace("{", " ").replace("}", " ").replace(",", " ").split()]


def read_wavelengths(path: PathLike) -> np.ndarray | None:
    """Band centre wavelengths (nm) stored in a raster's metadata, or ``None``.

    Recognised, in order: per-band metadata ``wavelength`` (GDAL's ENVI convention, with optional
    ``wavelength_units``), a dataset tag ``wavelength`` / ``wavelengths`` holding a list, or band
    descriptions that state a unit (``"450 nm"``, ``"0.45 um"``). Bare numeric descriptions are band
    numbers or names, never wavelengths. Units are read as words (:mod:`xr_unmix._units`):
    micrometres are converted to nm, ``Index`` means band numbers (no wavelengths), and without a
    stated unit values all below 30 are micrometres.
    """
    import rasterio

    from .._units import to_nm, wavelength_from_description, wavelength_unit

    with rasterio.open(path) as src:
        n = src.count
        per_band: list[float] = []
        units = ""
        for b in range(1, n + 1):
            tags = {k.lower(): v for k, v in src.tags(b).items()}
            if "wavelength" not in tags:
                break
            with contextlib.suppress(ValueError):
                per_band.append(float(tags["wavelength"]))
            units = tags.get("wavelength_units", units)
        wl: list[float] | None = per_band if len(per_band) == n else None
        if wl is None:
            tags = {k.lower(): v for k, v in src.tags().items()}
            for key in ("wavelength", "wavelengths"):
                if key in tags:
                    with contextlib.suppress(ValueError):
                        vals = _parse_wavelengths(tags[key])
                        if len(vals) == n:
                            wl = vals
                            units = tags.get("wavelength_units", units)
                            break
        if wl is None:
            described = [wavelength_from_description(d) for d in src.descriptions]
            if n and all(v is not None for v in described):
                wl, units = [float(v) for v in described if v is not None], "nm"
    if wl is None:
        return None
    return to_nm(np.asarray(wl, dtype=np.float64), wavelength_unit(units))


def auto_chunk(n_bands: int, itemsize: int = 4, *, target_mb: float = 64.0) -> int:
    """Spatial chunk side (px) so that one ``(n_bands, side, side)`` chunk is about ``target_mb`` MB.

    A multiple of 256 when that fits, else of 64 (at least 64): 256 for 200 float32 bands (52 MB),
    512 for 60 bands. Used by ``open_cube(chunks="auto")``.
    """
    side = int((target_mb * 2**20 / (max(1, n_bands) * itemsize)) ** 0.5)
    return side // 256 * 256 if side >= 256 else max(64, side // 64 * 64)


def open_cube(path: PathLike, *, chunks: dict[str, int] | int | str | None = None,
              masked: bool = True) -> xr.DataArray:
    """Open a hyperspectral GeoTIFF (or any GDAL raster) as a ``(band, y, x)`` DataArray.

    A thin wrapper over :func:`rioxarray.open_rasterio` that also attaches the ``wavelength``
    coordinate (nm) from the file's metadata (see :func:`read_wavelengths`) and keeps the band axis in
    one chunk. ``chunks`` is the spatial chunk size (an int, or a dict with ``y``/``x``), or ``"auto"``
    for :func:`auto_chunk` (chunks of ~64 MB whatever the band count: what bounds memory).

    Bands with a GDAL scale/offset (``uint16`` reflectance x 10000 with scale 1e-4, as AVIRIS-NG, EMIT
    L2A and the sample scenes store it) are decoded to physical values (float), so that they compare
    with endmember spectra in reflectance; nodata then reads as NaN. With ``masked=True`` nodata pixels
    read as NaN. A float file whose nodata is NaN (or unset) needs
    no masking, and is opened without rioxarray's masking pass, which cost 5x the read itself on a
    200-band cube; the result is the same (``_FillValue`` is moved to ``encoding`` as masking does).
    """
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
    wl = read_wavelengths(path)
    if wl is not None:
        cube = cube.assign_coords(wavelength=("band", wl))
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


def open_abundance(store: PathLike, name: str | None = None, *,
                   chunks: dict[str, int] | int | None = None) -> xr.DataArray:
    """Open an abundance map written by :func:`to_zarr` or :func:`to_cog` (lazy), with its CRS.

    A Zarr store gives the variable ``name`` (the only one when ``None``). A GeoTIFF gives
    ``(endmember, y, x)`` with the endmember names from the band descriptions that :func:`to_cog`
    writes (``band_1`` ... where a band has none) and nodata as NaN; ``chunks`` as for
    :func:`open_cube` (``None``: numpy, read on first use).
    """
    p = Path(store)
    if p.is_file():
        return _open_abundance_tif(p, chunks)
    ds = xr.open_zarr(store, decode_coords="all", consolidated=False)
    if name is None:
        names = [v for v in ds.data_vars]
        if len(names) != 1:
            raise ValueError(f"{store} holds variables {names}; pass name=")
        name = names[0]
    return ds[name]


def _open_abundance_tif(path: Path, chunks: dict[str, int] | int | None) -> xr.DataArray:
    import rasterio
    import rioxarray

    try:
        with rasterio.open(path) as src:
            names = [d or f"band_{i}" for i, d in enumerate(src.descriptions, start=1)]
    except Exception as exc:
        raise OSError(f"cannot open {path} as a raster: {exc}") from exc
    if isinstance(chunks, int):
        chunks = {"y": chunks, "x": chunks}
    ch = None if chunks is None else {"band": -1, **chunks}
    arr = rioxarray.open_rasterio(path, masked=True, chunks=ch)
    arr = arr.rename(band="endmember").assign_coords(endmember=names)
    arr.attrs.pop("long_name", None)
    return arr.rename(path.stem)
