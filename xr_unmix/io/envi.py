"""ENVI images (``.hdr`` + binary): read through GDAL/rioxarray, with the header's band fields applied.

GDAL's ENVI driver reads the binary, the georeferencing (``map info``, ``coordinate system string``,
rotated grids included) and ``data ignore value`` (as nodata). The header's other fields arrive in GDAL's
``ENVI`` metadata domain and are applied here: ``wavelength`` with ``wavelength units`` (µm or nm),
``fwhm``, ``bbl`` (bad-band list, 0 = bad) and ``reflectance scale factor`` (stored values are divided
by it, as ENVI defines it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from .bands import finish_bands

PathLike = str | os.PathLike[str]


def envi_list(value: str | None) -> list[str]:
    """Items of an ENVI header list (``"{1, 1, 0}"`` -> ``["1", "1", "0"]``); ``[]`` for None."""
    if not value:
        return []
    return [v.strip() for v in str(value).strip().strip("{}").split(",") if v.strip()]


def envi_data_file(path: PathLike) -> Path | None:
    """The binary file of an ENVI image given its ``.hdr`` or the binary itself, or ``None`` when
    ``path`` has no ENVI header beside it."""
    p = Path(path)
    if p.suffix.lower() == ".hdr":
        for cand in (p.with_suffix(""), *(p.with_suffix(s) for s in (".img", ".bsq", ".bil", ".bip",
                                                                     ".dat", ".raw"))):
            if cand.is_file():
                return cand
        raise InputError(f"{p} is an ENVI header but no binary file is beside it (looked for "
                         f"{p.with_suffix('')} and {p.with_suffix('.img')}); give the binary's path")
    for hdr in (p.with_suffix(".hdr"), Path(str(p) + ".hdr")):
        if hdr.is_file() and hdr.read_bytes()[:4] == b"ENVI":
            return p
    return None


def _floats(items: list[str], n: int, what: str, path: Path) -> np.ndarray | None:
    if not items:
        return None
    if len(items) != n:
        raise InputError(f"{path}: the ENVI header lists {len(items)} {what} values for {n} bands")
    try:
        return np.array([float(v) for v in items], dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"{path}: the ENVI header's {what} is not a list of numbers ({exc})") from exc


def envi_band_fields(path: PathLike) -> dict[str, Any]:
    """The band fields of an ENVI header, as read by GDAL's ENVI driver.

    Returns
    -------
    dict
        ``fwhm`` (B,) nm or None, ``bbl`` (B,) bool or None, ``scale`` (float, 1 when unset).
    """
    import rasterio

    from .._units import wavelength_unit

    p = Path(path)
    with rasterio.open(p) as src:
        n = src.count
        tags = {k.lower(): v for k, v in src.tags(ns="ENVI").items()}
    unit = wavelength_unit(tags.get("wavelength_units"))
    if unit not in ("nm", "um"):  # no stated unit: the wavelengths' own rule (all < 30: micrometres)
        wl = _floats(envi_list(tags.get("wavelength")), n, "wavelength", p)
        unit = "um" if wl is not None and np.nanmax(wl) < 30 else "nm"
    fwhm = _floats(envi_list(tags.get("fwhm")), n, "fwhm", p)
    if fwhm is not None and unit == "um":
        fwhm = fwhm * 1000.0
    bbl_vals = _floats(envi_list(tags.get("bbl")), n, "bbl", p)
    bbl = None if bbl_vals is None else bbl_vals != 0
    scale = 1.0
    if tags.get("reflectance_scale_factor"):
        try:
            scale = float(tags["reflectance_scale_factor"])
        except ValueError as exc:
            raise InputError(f"{p}: 'reflectance scale factor' is not a number: "
                             f"{tags['reflectance_scale_factor']!r}") from exc
        if not np.isfinite(scale) or scale <= 0:
            raise InputError(f"{p}: 'reflectance scale factor' must be > 0, got {scale}")
    return {"fwhm": fwhm, "bbl": bbl, "scale": scale}


def finish_envi(cube: xr.DataArray, path: PathLike, wavelength: np.ndarray | None, *,
                bad_bands: str, ignore_regions: Any) -> xr.DataArray:
    """Apply an ENVI header's band fields to the cube GDAL opened from ``path``.

    The ``reflectance scale factor`` divides the values (the result is float32 reflectance; the
    divisor is kept as ``encoding["scale_factor"] = 1 / factor`` so that the cube counts as decoded).
    ``bbl`` and the ignore windows make the ``good_band`` mask (see
    :func:`~xr_unmix.io.bands.finish_bands`).
    """
    fields = envi_band_fields(path)
    if fields["scale"] != 1.0:
        enc = dict(cube.encoding)
        attrs = dict(cube.attrs)
        cube = (cube.astype(np.float32) / np.float32(fields["scale"])).astype(np.float32)
        cube.attrs, cube.encoding = attrs, {**enc, "scale_factor": 1.0 / fields["scale"]}
    cube.attrs.pop("bbl", None)
    cube.attrs["reflectance_scale_factor_applied"] = fields["scale"]
    return finish_bands(cube, wavelength=wavelength, fwhm=fields["fwhm"], good=fields["bbl"],
                        bad_bands=bad_bands, ignore_regions=ignore_regions, product=True,
                        good_source="ENVI bbl" if fields["bbl"] is not None else "none")
