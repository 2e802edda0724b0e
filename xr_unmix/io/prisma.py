"""PRISMA L2D (ASI) HDF-EOS5: the VNIR and SWIR cubes merged into one ``(band, y, x)`` reflectance cube.

Layout followed (PRISMA Products Specification, L2D "geocoded surface reflectance", as the
``PRS_L2D_STD_*.he5`` granules ASI distributes; the same names are read by prismaread, the EnMAP-Box
importer and hyperproc):

- ``HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields/VNIR_Cube`` (66 bands) and ``SWIR_Cube`` (173 bands),
  ``uint16``, stored **band-interleaved by line**: ``(rows, bands, cols)``, rows running north to south
  on the UTM grid;
- root attributes ``List_Cw_Vnir`` / ``List_Cw_Swir`` (band centres, nm) and ``List_Fwhm_Vnir`` /
  ``List_Fwhm_Swir``, in the cube's band order, which is **descending** wavelength; bands that were
  not acquired are listed at **0.0 nm** (and 0 in ``List_Cw_Vnir_Flags`` / ``List_Cw_Swir_Flags``);
- the DN scale per spectrometer: ``reflectance = L2ScaleVnirMin + DN * (L2ScaleVnirMax -
  L2ScaleVnirMin) / 65535`` (``L2ScaleSwir*`` for SWIR); DN 0 is no measurement (the padding of the
  north-up grid outside the swath, and failed retrievals);
- the grid: ``Epsg_Code`` (UTM) and the corner attributes ``Product_ULcorner_easting`` / ``_northing``,
  ``Product_LRcorner_easting`` and ``Product_LLcorner_northing`` (the *centres* of the corner pixels);
  ``Processing_Level`` is ``"2D"``.

The cube here: both spectrometers, the bands sorted by ascending wavelength (the ~940-980 nm overlap
keeps both spectrometers' bands; a ``spectrometer`` coordinate says which is which), never-acquired
bands left out (never read), DN 0 as NaN, the CRS and transform set, lazy (dask).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from .bands import finish_bands, ignore_windows, in_windows
from .gdal import auto_chunk

PathLike = str | os.PathLike[str]

DN_MAX = 65535.0
SWATH = "HDFEOS/SWATHS/PRS_L2D_HCO"
_ARMS = ("Vnir", "Swir")


def is_prisma(path: PathLike) -> bool:
    """True when ``path`` is an HDF5 file laid out as a PRISMA granule (an ``HDFEOS/SWATHS/PRS_*``
    swath and the ``List_Cw_Vnir`` attribute)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            swaths = f.get("HDFEOS/SWATHS")
            return (swaths is not None and "List_Cw_Vnir" in f.attrs
                    and any(k.startswith("PRS_") for k in swaths))
    except OSError:
        return False


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _bands(attrs: Any) -> dict[str, np.ndarray]:
    """The merged band table, in file order (VNIR then SWIR): wavelength, fwhm, acquired, the
    spectrometer and the 0-based index in its cube."""
    wl, fwhm, ok, arm, idx = [], [], [], [], []
    for a in _ARMS:
        cw = np.asarray(attrs[f"List_Cw_{a}"], dtype=np.float64).ravel()
        fw = np.asarray(attrs[f"List_Fwhm_{a}"], dtype=np.float64).ravel()
        flags = attrs.get(f"List_Cw_{a}_Flags")
        acq = cw > 0
        if flags is not None:
            flags = np.asarray(flags).ravel()
            if flags.size != cw.size:
                raise KeyError(f"List_Cw_{a}_Flags (of {flags.size} bands; List_Cw_{a} has "
                               f"{cw.size})")
            acq &= flags != 0
        if fw.size != cw.size:
            raise KeyError(f"List_Fwhm_{a} (of {fw.size} bands; List_Cw_{a} has {cw.size})")
        wl.append(cw)
        fwhm.append(fw)
        ok.append(acq)
        arm.append(np.full(cw.size, a.upper(), dtype=object))
        idx.append(np.arange(cw.size))
    return {"wavelength": np.concatenate(wl), "fwhm": np.concatenate(fwhm),
            "acquired": np.concatenate(ok), "spectrometer": np.concatenate(arm),
            "index": np.concatenate(idx)}


def _grid(p: Path, attrs: Any, ny: int, nx: int) -> tuple[str, tuple[float, ...]]:
    """``(crs, GDAL geotransform)`` of the L2D grid from ``Epsg_Code`` and the corner-pixel centres."""
    try:
        epsg = int(np.ravel(attrs["Epsg_Code"])[0])
        x0 = float(np.ravel(attrs["Product_ULcorner_easting"])[0])
        y0 = float(np.ravel(attrs["Product_ULcorner_northing"])[0])
        x1 = float(np.ravel(attrs["Product_LRcorner_easting"])[0])
        y1 = float(np.ravel(attrs.get("Product_LLcorner_northing",
                                      attrs["Product_LRcorner_northing"]))[0])
    except KeyError as exc:
        raise InputError(f"{p}: PRISMA L2D attribute {exc} is missing; cannot georeference it") from exc
    px = (x1 - x0) / max(nx - 1, 1)
    py = (y0 - y1) / max(ny - 1, 1)
    return f"EPSG:{epsg}", (x0 - px / 2, px, 0.0, y0 + py / 2, 0.0, -py)


def _arm(p: Path, name: str, bands: np.ndarray, lo: float, hi: float, side: int) -> xr.DataArray:
    """One spectrometer's kept bands as ``(band, y, x)`` float32 reflectance, lazy; DN 0 -> NaN."""
    fields = xr.open_dataset(p, engine="h5netcdf", group=f"{SWATH}/Data Fields", phony_dims="sort",
                             decode_cf=False, mask_and_scale=False)
    raw = fields[f"{name.upper()}_Cube"]
    raw = raw.rename({raw.dims[0]: "y", raw.dims[1]: "band", raw.dims[2]: "x"})
    raw = raw.drop_vars(list(raw.coords)).isel(band=bands)
    raw = raw.chunk({"y": side, "band": -1, "x": side}).transpose("band", "y", "x")
    data = raw.where(raw != 0).astype(np.float32)
    return np.float32(lo) + data * np.float32((hi - lo) / DN_MAX)


def open_prisma(path: PathLike, *, chunks: dict[str, int] | int | str | None = None,
                bad_bands: str = "drop", ignore_regions: Any = "auto") -> xr.DataArray:
    """Open a PRISMA L2D granule (``PRS_L2D_STD_*.he5``) as a ``(band, y, x)`` reflectance cube.

    Parameters
    ----------
    path : a ``PRS_L2D_*.he5`` file
    chunks : int, dict, "auto" or None
        Spatial block size; the cube is always dask-backed (``None`` means ``"auto"``).
    bad_bands, ignore_regions
        As for :func:`xr_unmix.open_cube`. The bands listed at 0 nm (not acquired) are bad: dropped
        without being read, or, with ``bad_bands="keep"``, kept with a NaN wavelength and
        ``good_band`` False.

    Returns
    -------
    DataArray (band, y, x)
        Reflectance (float32), bands in ascending wavelength (nm); coordinates ``wavelength``,
        ``fwhm``, ``good_band``, ``spectrometer`` (``"VNIR"``/``"SWIR"``) and ``band_index`` (0-based,
        in that spectrometer's cube); the UTM CRS and the transform of the grid.

    Raises
    ------
    InputError
        A granule of another level (L1, L2B, L2C: swaths without a map grid), or one missing the
        attributes the layout needs.
    """
    import h5py

    from ._hdf import h5netcdf_engine

    h5netcdf_engine()  # the 'products' extra, or a clear error
    p = Path(path)
    with h5py.File(p, "r") as f:
        attrs = {k: f.attrs[k] for k in f.attrs}
        if SWATH not in f:
            level = _text(attrs.get("Processing_Level", "?"))
            raise InputError(f"{p} is a PRISMA level {level} granule; open_cube reads L2D (the "
                             f"geocoded reflectance, {SWATH}); hyperproc reads the other levels, "
                             "and its cube goes in through cube.unmix.fcls(E, dims=...)")
        shapes = {a: f[f"{SWATH}/Data Fields/{a.upper()}_Cube"].shape for a in _ARMS}
    try:
        table = _bands(attrs)
        scale = {a: (float(np.ravel(attrs[f"L2Scale{a}Min"])[0]),
                     float(np.ravel(attrs[f"L2Scale{a}Max"])[0])) for a in _ARMS}
    except KeyError as exc:
        raise InputError(f"{p}: PRISMA L2D attribute {exc} is missing or does not fit") from exc
    for a in _ARMS:
        n = int((table["spectrometer"] == a.upper()).sum())
        if shapes[a][1] != n:
            raise InputError(f"{p}: {a.upper()}_Cube has {shapes[a][1]} bands (axis 1 of rows, "
                             f"bands, cols) but List_Cw_{a} lists {n}")
    ny, nx = shapes["Vnir"][0], shapes["Vnir"][2]
    keep = _read_set(table, bad_bands, ignore_regions)
    order = keep[np.argsort(_sort_key(table)[keep], kind="stable")]
    side = auto_chunk(order.size) if chunks in (None, "auto") else (
        int(chunks) if isinstance(chunks, int) else int(chunks.get("y", chunks.get("x", 256))))
    parts = []
    for a in _ARMS:
        sel = order[table["spectrometer"][order] == a.upper()]
        if sel.size:
            parts.append((sel, _arm(p, a, table["index"][sel], *scale[a], side)))
    cube = xr.concat([d for _, d in parts], dim="band")
    merged = np.concatenate([s for s, _ in parts])
    cube = cube.isel(band=_positions(merged, order))
    return _finish(p, cube, table, order, attrs, (ny, nx), bad_bands, ignore_regions)


def _sort_key(table: dict[str, np.ndarray]) -> np.ndarray:
    """Ascending wavelength; bands not acquired (0 nm) last."""
    return np.where(table["acquired"], table["wavelength"], np.inf)


def _positions(merged: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Where each band of ``order`` sits in ``merged`` (the concatenation of the per-cube reads)."""
    where = {int(b): i for i, b in enumerate(merged)}
    return np.array([where[int(b)] for b in order])


def _read_set(table: dict[str, np.ndarray], bad_bands: str, regions: Any) -> np.ndarray:
    """Indices (file order) of the bands to read: every band for ``"keep"``; else the acquired ones
    outside the ignore windows (the others would be dropped afterwards: they are never read)."""
    if bad_bands == "keep":
        return np.arange(table["wavelength"].size)
    ok = table["acquired"] & ~in_windows(table["wavelength"], ignore_windows(regions, product=True))
    return np.flatnonzero(ok) if ok.any() else np.flatnonzero(table["acquired"])


def _finish(p: Path, cube: xr.DataArray, table: dict[str, np.ndarray], order: np.ndarray,
            attrs: dict[str, Any], shape: tuple[int, int], bad_bands: str,
            ignore_regions: Any) -> xr.DataArray:
    import rioxarray  # noqa: F401  (registers .rio)
    from affine import Affine

    crs, gt = _grid(p, attrs, *shape)
    ny, nx = shape
    acquired = table["acquired"][order]
    wl = np.where(acquired, table["wavelength"][order], np.nan)
    rank = np.empty(table["wavelength"].size, dtype=np.int64)  # the band's number in the full,
    rank[np.argsort(_sort_key(table), kind="stable")] = np.arange(1, rank.size + 1)  # sorted cube
    cube = cube.assign_coords(
        band=rank[order],
        y=gt[3] + (np.arange(ny) + 0.5) * gt[5], x=gt[0] + (np.arange(nx) + 0.5) * gt[1],
        spectrometer=("band", table["spectrometer"][order].astype(str)),
        band_index=("band", table["index"][order],
                    {"long_name": "0-based band position in its spectrometer's cube"}))
    cube.y.attrs.update(units="metre", standard_name="projection_y_coordinate")
    cube.x.attrs.update(units="metre", standard_name="projection_x_coordinate")
    cube = cube.rio.write_crs(crs).rio.write_transform(Affine.from_gdal(*gt))
    cube.attrs = {"sensor": "PRISMA", "product": "PRISMA L2D surface reflectance",
                  "processing_level": _text(attrs.get("Processing_Level", "2D")), "source": str(p),
                  "long_name": "reflectance", "units": "1"}
    cube.encoding["source"] = str(p)
    not_read = int(table["wavelength"].size - order.size)
    return finish_bands(cube, wavelength=wl, fwhm=table["fwhm"][order], good=acquired,
                        bad_bands=bad_bands, ignore_regions=ignore_regions, product=True,
                        good_source="PRISMA List_Cw_*_Flags (0 nm: not acquired)",
                        dropped_before=not_read)
