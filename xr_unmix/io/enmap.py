"""EnMAP L2A (DLR): ``*-SPECTRAL_IMAGE.TIF`` with its ``*-METADATA.XML``.

Layout followed (EnMAP L2A product, processor v01.03 / v01.04, the DLR product specification):

- the image is one GeoTIFF of 224 bands (91 VNIR then 133 SWIR), ``int16``, no-data ``-32768``;
- the XML (root ``level_X``) lists each band under ``specific/bandCharacterisation/bandID[@number]``
  with ``wavelengthCenterOfBand`` and ``FWHMOfBand`` (nm), ``GainOfBand`` and ``OffsetOfBand``:
  ``value = DN * gain + offset`` (L2A reflectance: gain 1e-4, offset 0).

The VNIR and SWIR detectors overlap at 902-993 nm, so the wavelengths are **not monotonic**: the band
order of the file is kept (band ``i`` of the cube is band ``i`` of the file and of the XML), never sorted.
Endmembers are resampled onto the cube's wavelength coordinate band by band, which handles it
(:func:`xr_unmix.resample_spectra`).

L2A fills its few bad bands with no-data. A band that is no-data at every pixel of a central window
where the other bands hold data is marked bad (``good_band`` False): one small read, so that such a
band does not make every pixel invalid.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from .bands import finish_bands
from .gdal import open_gdal

PathLike = str | os.PathLike[str]

NODATA = -32768
_IMAGE = "-SPECTRAL_IMAGE"
_XML = "-METADATA.XML"


def enmap_pair(path: PathLike) -> tuple[Path, Path] | None:
    """``(image, xml)`` when ``path`` is an EnMAP ``*-SPECTRAL_IMAGE*.TIF`` with its ``*-METADATA.XML``
    beside it, or that XML with its image; else ``None``."""
    p = Path(path)
    name = p.name.upper()
    if name.endswith(_XML):
        stem = p.name[: -len(_XML)]
        for suffix in ("-SPECTRAL_IMAGE.TIF", "-SPECTRAL_IMAGE.tif", "-SPECTRAL_IMAGE_COG.TIF"):
            if (p.parent / (stem + suffix)).is_file():
                return p.parent / (stem + suffix), p
        raise InputError(f"{p} is an EnMAP metadata file but no {stem}-SPECTRAL_IMAGE.TIF is beside "
                         "it; give the image's path")
    if _IMAGE in name and p.suffix.lower() in (".tif", ".tiff"):
        xml = p.parent / (p.name[: name.index(_IMAGE)] + _XML)
        if xml.is_file():
            return p, xml
    return None


def read_enmap_metadata(xml: PathLike) -> dict[str, np.ndarray]:
    """Band table of an EnMAP ``METADATA.XML``.

    Returns
    -------
    dict
        ``wavelength``, ``fwhm`` (nm), ``gain``, ``offset``: (B,) float64 arrays in the XML's band
        order (by ``bandID/@number``).
    """
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as exc:
        raise InputError(f"{xml}: cannot read the EnMAP metadata XML ({exc})") from exc
    bands = root.findall("specific/bandCharacterisation/bandID") or root.findall(
        ".//bandCharacterisation/bandID")
    if not bands:
        raise InputError(f"{xml}: no specific/bandCharacterisation/bandID entries; is it an EnMAP "
                         "METADATA.XML?")
    rows = []
    for i, b in enumerate(bands, start=1):
        try:
            rows.append((int(b.get("number", i)), float(b.findtext("wavelengthCenterOfBand")),
                         float(b.findtext("FWHMOfBand") or "nan"),
                         float(b.findtext("GainOfBand") or "1"),
                         float(b.findtext("OffsetOfBand") or "0")))
        except (TypeError, ValueError) as exc:
            raise InputError(f"{xml}: bandID {b.get('number', i)} has no valid "
                             f"wavelengthCenterOfBand/FWHMOfBand/GainOfBand ({exc})") from exc
    rows.sort(key=lambda r: r[0])
    arr = np.array([r[1:] for r in rows], dtype=np.float64)
    return {"wavelength": arr[:, 0], "fwhm": arr[:, 1], "gain": arr[:, 2], "offset": arr[:, 3]}


def open_enmap(path: PathLike, *, chunks: dict[str, int] | int | str | None = None,
               bad_bands: str = "drop", ignore_regions: Any = "auto") -> xr.DataArray:
    """Open an EnMAP L2A product as a ``(band, y, x)`` float32 reflectance cube.

    Parameters
    ----------
    path : the ``*-SPECTRAL_IMAGE.TIF`` (its ``*-METADATA.XML`` must be beside it) or the XML
    chunks, bad_bands, ignore_regions
        As for :func:`xr_unmix.open_cube`.

    Returns
    -------
    DataArray (band, y, x)
        ``DN * gain + offset`` per band, no-data as NaN; ``wavelength``/``fwhm`` (nm, file order,
        not monotonic) and ``good_band`` coordinates; the GeoTIFF's CRS and transform.

    Raises
    ------
    InputError
        When the XML's band count differs from the image's (naming both files and counts).
    """
    pair = enmap_pair(path)
    if pair is None:
        raise InputError(f"{path}: not an EnMAP *-SPECTRAL_IMAGE.TIF with its *-METADATA.XML beside it")
    image, xml = pair
    meta = read_enmap_metadata(xml)
    raw = open_gdal(image, chunks=chunks, masked=False)
    n_img, n_xml = int(raw.sizes["band"]), meta["wavelength"].size
    if n_img != n_xml:
        raise InputError(f"{xml.name} describes {n_xml} bands but {image.name} has {n_img}: the "
                         "metadata does not belong to this image (or one of them is truncated)")
    nodata = raw.rio.nodata if raw.rio.nodata is not None else NODATA
    gain = xr.DataArray(meta["gain"].astype(np.float32), dims="band")
    offset = xr.DataArray(meta["offset"].astype(np.float32), dims="band")
    valid = raw != nodata
    cube = (raw.astype(np.float32) * gain + offset).where(valid).astype(np.float32)
    cube.attrs = {"sensor": "EnMAP", "product": "L2A", "source_xml": str(xml),
                  "long_name": "surface reflectance", "units": "1"}
    cube = cube.rio.write_crs(raw.rio.crs).rio.write_transform(raw.rio.transform(recalc=False))
    # decoded: the stored dtype and the gain are kept so that the cube is not taken for raw DN
    cube.encoding = {**raw.encoding, "scale_factor": float(np.median(meta["gain"]))}
    good = _filled_bands(image, n_img, nodata)
    return finish_bands(cube, wavelength=meta["wavelength"], fwhm=meta["fwhm"], good=good,
                        bad_bands=bad_bands, ignore_regions=ignore_regions, product=True,
                        good_source="EnMAP: bands all no-data in a central window"
                        if good is not None else "none")


def _filled_bands(image: Path, n: int, nodata: float, side: int = 128) -> np.ndarray | None:
    """False for the bands that are no-data wherever other bands hold data, in a central window of
    ``side`` px; ``None`` when the window holds no data at all (nothing can be said)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(image) as src:
        h, w = src.height, src.width
        win = Window(max(0, (w - side) // 2), max(0, (h - side) // 2), min(side, w), min(side, h))
        block = src.read(window=win)
    filled = block != nodata
    data_px = filled.sum(axis=0) > filled.shape[0] // 2  # pixels where most bands hold data
    if not data_px.any():
        return None
    return filled[:, data_px].any(axis=1)
