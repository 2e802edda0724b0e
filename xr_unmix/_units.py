"""Wavelength units, read from the words of a header (not from substrings of them).

One rule for every reader (GeoTIFF tags and band descriptions, CSV headers, ENVI ``wavelength units``):
a unit is a whole word -- ``nm``, ``nanometers``; ``um``, ``µm``, ``micron(s)``, ``micrometers`` --
so ``spectrum_nm`` is nm, ``medium`` and ``band_number`` say nothing, and ``band`` / ``index`` /
``band_number`` mean band numbers, not wavelengths. Without a stated unit, values all below 30 are
taken as micrometres (no sensor of reflectance has band centres below 30 nm), others as nm.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np

Unit = Literal["nm", "um", "index"]

_NM = {"nm", "nanometer", "nanometers", "nanometre", "nanometres"}
_UM = {"um", "µm", "μm", "micron", "microns", "micrometer", "micrometers", "micrometre",
       "micrometres"}
_INDEX = {"band", "bands", "index", "band_number", "band_index", "bandnumber", "channel", "number"}

#: a band description that states a wavelength with its unit: "450 nm", "0.45 um", "Band 3 (450.1 nm)"
_DESCRIPTION_RE = re.compile(
    r"(?P<value>[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*(?P<unit>nm|nanomet\w*|um|µm|μm|micro\w*)\b",
    re.IGNORECASE)


def words(text: str) -> list[str]:
    """Lower-case words of ``text``: split at anything but letters and digits (``_`` splits too)."""
    return [w for w in re.split(r"[^0-9a-zµμ]+", str(text).lower()) if w]


def wavelength_unit(text: str | None) -> Unit | None:
    """The unit a header or units field states: ``"nm"``, ``"um"``, ``"index"`` or ``None``.

    >>> [wavelength_unit(t) for t in ("Wavelength (um)", "spectrum_nm", "medium", "band_number")]
    ['um', 'nm', None, 'index']
    """
    if not text:
        return None
    low = str(text).strip().lower()
    if low in _INDEX:
        return "index"
    w = words(low)
    if any(x in _UM for x in w) or any(x.startswith("micro") for x in w):
        return "um"
    if any(x in _NM or x.startswith("nanomet") for x in w):
        return "nm"
    if w and all(x in _INDEX for x in w):
        return "index"
    return None


def to_nm(values: np.ndarray, unit: Unit | None) -> np.ndarray | None:
    """Wavelengths in nm from ``values`` in ``unit``; ``None`` for band numbers (``"index"``).

    With no unit, values all below 30 are micrometres.
    """
    arr = np.asarray(values, dtype=np.float64)
    if unit == "index":
        return None
    if unit == "um" or (unit is None and arr.size and np.nanmax(arr) < 30):
        return arr * 1000.0
    return arr


def wavelength_from_description(text: str | None) -> float | None:
    """nm from a band description that states its unit (``"450 nm"``, ``"0.45 µm"``), else ``None``.

    A bare number (``"3"``) is a band number or a name, never a wavelength.
    """
    if not text:
        return None
    m = _DESCRIPTION_RE.search(str(text))
    if m is None:
        return None
    value = float(m["value"])
    return value * 1000.0 if wavelength_unit(m["unit"]) == "um" else value
