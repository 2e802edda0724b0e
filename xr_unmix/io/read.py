"""Reading: hyperspectral cubes from GDAL rasters, and abundance maps written by this package."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import ParameterError
from .gdal import auto_chunk, band_floats, open_gdal  # noqa: F401  (auto_chunk: public here)

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


def open_cube(path: PathLike, *, chunks: dict[str, int] | int | str | None = None,
              masked: bool = True, bad_bands: str = "drop", ignore_regions: Any = "auto",
              ortho: bool = True, mask: PathLike | None = None,
              mask_flags: str | Sequence[str] = "aggregate") -> xr.DataArray:
    """Open a hyperspectral image or sensor product as a ready ``(band, y, x)`` DataArray.

    The format is told from the content: an EMIT L2A/L1B NetCDF (:func:`~xr_unmix.io.emit.open_emit`),
    a PRISMA L2D HDF-EOS5 (:func:`~xr_unmix.io.prisma.open_prisma`: VNIR + SWIR merged), an EnMAP L2A ``*-SPECTRAL_IMAGE.TIF`` with its ``*-METADATA.XML``
    (:func:`~xr_unmix.io.enmap.open_enmap`), an ENVI image (``.hdr`` beside the binary, or the
    ``.hdr`` itself), or any other GDAL raster (GeoTIFF/COG). Every reader sets the ``wavelength``
    (nm), ``fwhm`` (nm, where the file has it) and ``good_band`` coordinates on ``band``, decodes the
    scale/offset, turns fill values into NaN and sets the CRS and transform (rioxarray).

    Parameters
    ----------
    path : str or path-like
    chunks : int, dict, "auto" or None
        Spatial chunk size (an int, or a dict with ``y``/``x``), or ``"auto"`` for :func:`auto_chunk`
        (chunks of ~64 MB whatever the band count: what bounds memory). ``None``: not dask-backed,
        read on first use (an orthorectified EMIT cube and a PRISMA cube are always dask-backed,
        ``"auto"``).
    masked : bool
        GeoTIFF/ENVI: nodata pixels read as NaN.
    bad_bands : {"drop", "keep"}
        ``"drop"`` (default) removes the bad bands (ENVI ``bbl``, EMIT ``good_wavelengths``, PRISMA
        bands at 0 nm) and those
        in an ignore window; ``"keep"`` keeps all, with the ``good_band`` mask as a coordinate. The
        choice is recorded in ``attrs["bad_bands"]`` and ``attrs["bands_dropped"]``.
    ignore_regions : "auto", "default", None or sequence of (start_nm, stop_nm)
        Wavelength windows to leave out (see :func:`~xr_unmix.io.bands.ignore_windows`). ``"auto"``:
        :data:`~xr_unmix.io.bands.DEFAULT_IGNORE_REGIONS` (water vapour and detector edges) for ENVI,
        EMIT, PRISMA and EnMAP, none for GeoTIFF/COG, whose band set stays as the file has it. ``None``/``()``:
        none.
    ortho : bool
        EMIT: orthorectify through the GLT (default) or give the swath.
    mask : path, optional
        EMIT: the granule's ``EMIT_L2A_MASK_*.nc``; pixels whose ``mask_flags`` are set become NaN
        (:func:`~xr_unmix.io.emit.open_emit`). Refused for other formats.
    mask_flags : str or sequence of str
        EMIT: ``"aggregate"`` (default), or any of ``"cloud"``, ``"cirrus"``, ``"water"``,
        ``"spacecraft"``, ``"dilated_cloud"``.

    Returns
    -------
    DataArray (band, y, x)
        Reflectance (or whatever the file stores), float where decoded.

    Notes
    -----
    Bands with a GDAL scale/offset (``uint16`` reflectance x 10000 with scale 1e-4, as AVIRIS-NG and
    the sample scenes store it) are decoded to physical values (float), so that they compare with
    endmember spectra in reflectance; nodata then reads as NaN. A float file whose nodata is NaN (or
    unset) needs no masking, and is opened without rioxarray's masking pass, which cost 5x the read
    itself on a 200-band cube; the result is the same (``_FillValue`` is moved to ``encoding`` as
    masking does).
    """
    from .bands import check_bad_bands, ignore_windows

    check_bad_bands(bad_bands)
    ignore_windows(ignore_regions, product=True)  # validate before any reading
    kind, data_path = product_kind(path)
    opts = {"bad_bands": bad_bands, "ignore_regions": ignore_regions}
    if kind == "emit":
        from .emit import open_emit

        return open_emit(data_path, chunks=chunks, ortho=ortho, mask=mask, mask_flags=mask_flags,
                         **opts)
    if mask is not None:
        raise ParameterError(f"mask= is for EMIT granules (an EMIT_L2A_MASK file); {path} is read "
                             f"as {kind}").about("mask")
    if kind == "prisma":
        from .prisma import open_prisma

        return open_prisma(data_path, chunks=chunks, **opts)
    if kind == "enmap":
        from .enmap import open_enmap

        return open_enmap(data_path, chunks=chunks, **opts)
    cube = open_gdal(data_path, chunks=chunks, masked=masked)
    wl = read_wavelengths(data_path)
    if kind == "envi":
        from .envi import finish_envi

        return finish_envi(cube, data_path, wl, **opts)
    from .bands import finish_bands

    return finish_bands(cube, wavelength=wl, fwhm=band_floats(data_path, "fwhm"), product=False,
                        **opts)


def product_kind(path: PathLike) -> tuple[str, PathLike]:
    """What :func:`open_cube` reads ``path`` as: ``("emit" | "prisma" | "enmap" | "envi" | "gdal",
    path to open)``, from the content (HDF5 signature and groups, an EnMAP XML beside, an ENVI header)."""
    from .enmap import enmap_pair
    from .envi import envi_data_file

    p = Path(path)
    if p.is_file():
        with open(p, "rb") as fh:
            head = fh.read(8)
        if head == b"\x89HDF\r\n\x1a\n":
            from .emit import is_emit

            if is_emit(p):
                return "emit", p
            from .prisma import is_prisma

            if is_prisma(p):
                return "prisma", p
        pair = enmap_pair(p)
        if pair is not None:
            return "enmap", pair[0]
        data = envi_data_file(p)
        if data is not None:
            return "envi", data
    return "gdal", path


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
