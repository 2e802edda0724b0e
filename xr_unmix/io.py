"""Reading cubes and writing abundance maps: Cloud-Optimized GeoTIFF and Zarr v3.

Writers stream a dask-backed result block by block (never the whole map in memory) and write to a
temporary sibling of the target, renamed into place only on success: an error or an interrupt leaves
nothing at the target path.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import xarray as xr

from . import _atomic
from ._writers import as_layers as _as_layers  # noqa: F401  (kept for callers)
from ._writers import check_grid as _check_grid  # noqa: F401
from .runtime import (  # noqa: F401  (GDAL options and compute_settled: public names kept here)
    GDAL_CACHE_MB,
    compute_settled,
    gdal_cache_bytes,
    gdal_env,
    gdal_options,
)

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

    from ._units import to_nm, wavelength_from_description, wavelength_unit

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
        except Exception as exc:  # noqa: BLE001  (rasterio's own hierarchy; name the file)
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


# -- writing helpers -------------------------------------------------------------------------------

def _remove(p: Path) -> None:
    """Remove a scratch entry of this process (see :mod:`xr_unmix._atomic`)."""
    _atomic._remove(p)


# -- COG -------------------------------------------------------------------------------------------

def to_cog(
    abundance: xr.DataArray,
    path: PathLike,
    *,
    compress: str = "DEFLATE",
    level: int | None = None,
    blocksize: int = 256,
    overview_resampling: str = "average",
    overwrite: bool = False,
    require_crs: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``(endmember, y, x)`` (or a ``(y, x)`` layer) as a Cloud-Optimized GeoTIFF.

    One band per endmember, band descriptions = endmember names, float32, nodata NaN, internal tiles of
    ``blocksize`` and overviews. A dask-backed input is streamed tile by tile into a tiled scratch
    GeoTIFF (uncompressed up to 4 GiB, else ZSTD level 1; ``lock=True``, which becomes a cluster-wide
    lock under ``distributed``) that GDAL's COG driver then copies, compressing and adding overviews;
    both live beside ``path`` under temporary names until the final rename.

    GDAL metadata: per-band units (``1``, abundance fractions) and tags (endmember name, class when
    the result has a ``class`` coordinate); dataset tags with the provenance record of
    :func:`xr_unmix.metadata.product_attrs` (method and parameters, input file, input bands and
    wavelengths, endmembers, software version, date). A south-up input (``y`` increasing) is written
    north-up. ``path`` must end in ``.tif`` or ``.tiff`` (:class:`~xr_unmix.errors.ParameterError`
    otherwise, e.g. for ``x.zarr``). To write a COG and a Zarr store from one computation, use
    :func:`xr_unmix.write`.

    Parameters
    ----------
    abundance : DataArray (endmember, y, x) or (y, x)
    path : str or path
        Ends in ``.tif`` or ``.tiff``.
    compress : str
        GDAL compression (``DEFLATE``, ``ZSTD``, ``LZW``, ``NONE``).
    level : int, optional
        Compression level (DEFLATE 1-12, ZSTD 1-22). Default: 1 for DEFLATE and ZSTD. On abundance maps
        (float32, floating-point predictor) DEFLATE level 1 gave the same size as GDAL's default level 6
        (75.3 vs 75.7 MB for 2048² x 5, smooth maps; 98.7 vs 98.1 MB, noise) in 2/3 of the CPU time.
    blocksize : int
        Tile size in pixels (a multiple of 16).
    overview_resampling : str
    overwrite : bool
        Replace an existing file (only once the new one is complete).
    require_crs : bool
        Raise :class:`~xr_unmix.errors.MissingCRSError` instead of warning when there is no CRS.
    progress : bool
        Show Dask's progress bar while computing (local schedulers).

    Returns
    -------
    Path of the written file.
    """
    from . import _writers

    job = _writers.cog_job(abundance, path, compress=compress, level=level, blocksize=blocksize,
                           overview_resampling=overview_resampling, overwrite=overwrite,
                           require_crs=require_crs)
    return _writers.run([job], progress=progress and abundance.chunks is not None)[0]


# -- Zarr ------------------------------------------------------------------------------------------

def to_zarr(
    abundance: xr.DataArray,
    store: PathLike,
    *,
    name: str | None = None,
    chunks: int | None = None,
    level: int = 1,
    overwrite: bool = False,
    require_crs: bool = False,
    progress: bool = False,
    zarr_format: int = 3,
) -> Path:
    """Write ``(endmember, y, x)`` (or a ``(y, x)`` layer) to a Zarr store (v3, or v2 for GDAL).

    The CRS travels as a CF ``spatial_ref`` variable named by the variable's ``grid_mapping``
    attribute, and ``x``/``y`` carry CF ``units``/``standard_name`` (rioxarray's
    ``write_grid_mapping`` and ``write_coordinate_system``); read it back with
    ``xr.open_zarr(store, decode_coords="all")`` (or :func:`open_abundance`) and ``.rio.crs``. The
    variable's attributes hold the provenance record (see :func:`to_cog`).

    Which readers open which format: xarray/zarr-python read both; GDAL 3.10 (the rasterio wheel's)
    reads only ``zarr_format=2`` (``rasterio.open('ZARR:"ab.zarr":/abundance')``); its Zarr v3 support
    predates the v3 ``bytes`` codec ("Unsupported codec: bytes"); GDAL >= 3.11 reads v3.
    Endmember names are stored as variable-length UTF-8 strings. A dask-backed input is written chunk
    by chunk (Zarr chunks = the result's chunks, made regular if needed).

    Parameters
    ----------
    abundance : DataArray (endmember, y, x) or (y, x)
    store : str or path
        A local directory path ending in ``.zarr`` (written to a temporary sibling, renamed on
        success).
    name : str, optional
        Variable name (default the DataArray's name, else ``"abundance"``).
    chunks : int, optional
        Spatial chunk size; default the dask chunks, or 512 for an in-memory array.
    level : int
        Zstandard level of the chunks (Zstandard is Zarr v3's default codec). Level 1: on a 2048² x 5
        FCLS result, 74.1 MB against 73.8 MB at zarr's default level (3), in a third of the CPU time
        (0.28 vs 0.83 s).
    overwrite, require_crs, progress
        As in :func:`to_cog`.
    zarr_format : {3, 2}
        Zarr v3 (default), or v2 for GDAL < 3.11 (Zstandard through numcodecs in both).

    Returns
    -------
    Path of the store.
    """
    from . import _writers

    job = _writers.zarr_job(abundance, store, name=name, chunks=chunks, level=level,
                            zarr_format=zarr_format, overwrite=overwrite, require_crs=require_crs)
    return _writers.run([job], progress=progress)[0]


def zarr_complete(store: PathLike) -> bool:
    """True if every array of the Zarr store holds every one of its chunks.

    :func:`to_zarr` writes all chunks (all-NaN ones too), so a missing chunk means a damaged or
    partial store, which would otherwise read back as NaN where the chunk was.
    """
    import zarr

    try:
        group = zarr.open_group(os.fspath(store), mode="r")
        return all(arr.nchunks_initialized == arr.nchunks for _, arr in group.arrays())
    except Exception:  # noqa: BLE001  (unreadable: not complete)
        return False


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
    except Exception as exc:  # noqa: BLE001  (rasterio's own hierarchy; name the file)
        raise OSError(f"cannot open {path} as a raster: {exc}") from exc
    if isinstance(chunks, int):
        chunks = {"y": chunks, "x": chunks}
    ch = None if chunks is None else {"band": -1, **chunks}
    arr = rioxarray.open_rasterio(path, masked=True, chunks=ch)
    arr = arr.rename(band="endmember").assign_coords(endmember=names)
    arr.attrs.pop("long_name", None)
    return arr.rename(path.stem)
