"""The spectral axis of a sensor product: wavelengths, band widths, the good-band mask, ignore windows.

Every reader (:mod:`~xr_unmix.io.envi`, :mod:`~xr_unmix.io.emit`, :mod:`~xr_unmix.io.enmap`, the
GeoTIFF path of :func:`~xr_unmix.io.read.open_cube`) ends with :func:`finish_bands`, so that bad bands
and ignore windows are treated one way whatever the format.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..errors import ParameterError

#: Wavelength windows (nm) left out of the solve by default for sensor products: below 440 nm (the
#: noisy blue edge), the 1380 nm and 1880 nm water-vapour bands, and above 2440 nm (the SWIR detector
#: edge). These are SpectralUnmixing's ``--wavelength_ignore_regions`` defaults
#: (0-440, 1310-1490, 1770-2050, 2440-2880).
DEFAULT_IGNORE_REGIONS: tuple[tuple[float, float], ...] = (
    (0.0, 440.0), (1310.0, 1490.0), (1770.0, 2050.0), (2440.0, 2880.0))

BAD_BANDS = ("drop", "keep")


def check_bad_bands(bad_bands: str) -> str:
    """Validate ``open_cube(bad_bands=...)``: ``"drop"`` or ``"keep"``."""
    if bad_bands not in BAD_BANDS:
        raise ParameterError(f"bad_bands must be 'drop' or 'keep', got {bad_bands!r}").about(
            "bad_bands")
    return bad_bands


def ignore_windows(regions: Any, *, product: bool) -> tuple[tuple[float, float], ...]:
    """The ignore windows (nm) that ``regions`` names.

    Parameters
    ----------
    regions : "auto", "default", None, or a sequence of ``(start_nm, stop_nm)`` pairs
        ``"auto"``: :data:`DEFAULT_IGNORE_REGIONS` for a sensor product (ENVI, EMIT, EnMAP), none for a
        GeoTIFF/COG (whose band set is kept as the file has it); ``"default"``: the default windows for
        any file; ``None`` or ``()``: none. A flat list of an even number of values
        (``[0, 440, 1310, 1490]``, as SpectralUnmixing takes them) is read as pairs.
    product : bool
        Whether the file is a sensor product (for ``"auto"``).
    """
    if isinstance(regions, str):
        if regions == "auto":
            return DEFAULT_IGNORE_REGIONS if product else ()
        if regions == "default":
            return DEFAULT_IGNORE_REGIONS
        raise ParameterError(f"ignore_regions must be 'auto', 'default', None or (start, stop) "
                             f"pairs in nm; got {regions!r}").about("ignore_regions")
    if regions is None:
        return ()
    try:
        vals = list(regions)
        if vals and not isinstance(vals[0], Iterable):
            if len(vals) % 2:
                raise ValueError("an odd number of values")
            vals = [vals[i:i + 2] for i in range(0, len(vals), 2)]
        pairs = tuple((float(a), float(b)) for a, b in vals)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"ignore_regions must be (start, stop) pairs in nm, e.g. "
                             f"[(1340, 1450), (1800, 1960)]; got {regions!r} ({exc})"
                             ).about("ignore_regions") from exc
    for a, b in pairs:
        if not (np.isfinite(a) and np.isfinite(b) and a < b):
            raise ParameterError(f"ignore region ({a}, {b}) must have start < stop, in nm"
                                 ).about("ignore_regions")
    return pairs


def in_windows(wavelength: np.ndarray, windows: Sequence[tuple[float, float]]) -> np.ndarray:
    """Boolean mask: True where ``wavelength`` (nm) lies in any ``[start, stop]`` window."""
    wl = np.asarray(wavelength, dtype=np.float64)
    out = np.zeros(wl.shape, dtype=bool)
    for a, b in windows:
        out |= (wl >= a) & (wl <= b)
    return out


def finish_bands(cube: xr.DataArray, *, wavelength: np.ndarray | None, fwhm: np.ndarray | None = None,
                 good: np.ndarray | None = None, bad_bands: str = "drop", ignore_regions: Any = "auto",
                 product: bool = True, good_source: str = "none",
                 dropped_before: int = 0) -> xr.DataArray:
    """Set the band coordinates of a ``(band, ...)`` cube and apply the bad-band choice.

    Parameters
    ----------
    cube : DataArray with a ``band`` dim of size B
    wavelength, fwhm : (B,) float arrays in nm, or None
    good : (B,) bool array, or None
        The product's own good-band flags (ENVI ``bbl``, EMIT ``good_wavelengths``); None: all good.
    bad_bands : {"drop", "keep"}
        ``"drop"`` removes the bands whose ``good_band`` is False (the product's bad bands and those in
        an ignore window); ``"keep"`` keeps every band, with the mask as the ``good_band`` coordinate
        (``cube.sel(band=cube.good_band)`` drops them later).
    ignore_regions
        See :func:`ignore_windows`; needs wavelengths (ignored without them).
    product : bool
        Whether the file is a sensor product (``ignore_regions="auto"``).
    good_source : str
        Where ``good`` came from, recorded in ``attrs["good_band_source"]``.
    dropped_before : int
        Bands a reader already left out (never read), added to ``attrs["bands_dropped"]``.

    Returns
    -------
    DataArray
        With ``wavelength`` (nm), ``fwhm`` (nm) and ``good_band`` coordinates on ``band`` and attrs
        ``bad_bands``, ``ignore_regions_nm``, ``bands_dropped``, ``good_band_source``.
    """
    check_bad_bands(bad_bands)
    windows = ignore_windows(ignore_regions, product=product)
    n = int(cube.sizes["band"])
    mask = np.ones(n, dtype=bool) if good is None else np.asarray(good, dtype=bool).copy()
    coords: dict[str, Any] = {}
    if wavelength is not None:
        wl = np.asarray(wavelength, dtype=np.float64)
        coords["wavelength"] = ("band", wl, {"units": "nm", "long_name": "band centre wavelength"})
        mask &= ~in_windows(wl, windows)
    if fwhm is not None:
        coords["fwhm"] = ("band", np.asarray(fwhm, dtype=np.float64),
                          {"units": "nm", "long_name": "band full width at half maximum"})
    coords["good_band"] = ("band", mask, {"long_name": "band used for unmixing"})
    cube = cube.assign_coords(coords)
    dropped = int(dropped_before)
    if bad_bands == "drop" and not mask.all():
        if not mask.any():
            raise ParameterError(f"every one of the {n} bands is bad or in an ignore window "
                                 f"({list(windows)}); pass bad_bands='keep' or other "
                                 "ignore_regions").about("ignore_regions")
        dropped += int((~mask).sum())
        cube = cube.isel(band=np.flatnonzero(mask))
    cube.attrs.update(bad_bands=bad_bands, bands_dropped=dropped, good_band_source=good_source,
                      ignore_regions_nm=str([list(w) for w in windows]))
    return cube
