"""Endmember spectra in and out: CSV and ENVI spectral libraries, and resampling onto a cube's bands."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ._cube import as_endmembers
from ._units import to_nm, wavelength_unit
from .errors import InputError

PathLike = str | os.PathLike[str]

_ENVI_DTYPES = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4", 14: "i8", 15: "u8"}


def _spectra_da(values: np.ndarray, names: list[str], wavelengths: np.ndarray | None,
                source: str) -> xr.DataArray:
    coords: dict[str, Any] = {"band": np.arange(1, values.shape[0] + 1),
                              "endmember": np.array(names, dtype=object)}
    if wavelengths is not None:
        coords["wavelength"] = ("band", np.asarray(wavelengths, dtype=np.float64))
    da = xr.DataArray(values, dims=("band", "endmember"), coords=coords, name="endmembers",
                      attrs={"source": source})
    return as_endmembers(da)


def read_endmembers(path: PathLike) -> xr.DataArray:
    """Read endmember spectra from a CSV file or an ENVI spectral library.

    Parameters
    ----------
    path : str or path
        - ``.csv``: a header row; the first column is the wavelength (nm; micrometres, i.e. all values
          < 30, are converted), then one column per endmember, named in the header.
        - ``.sli`` / ``.hdr`` (ENVI spectral library): the binary file and its header; spectra names
          from ``spectra names``, wavelengths from ``wavelength`` (``wavelength units`` honoured).

    Returns
    -------
    DataArray (band, endmember) with ``endmember`` names and a ``wavelength`` coordinate (nm).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no endmember file at {path}")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        return _read_csv(path)
    if suffix in (".sli", ".hdr", ".lib"):
        return _read_envi(path)
    raise ValueError(f"{path}: unknown endmember file type {suffix!r}; use .csv or an ENVI .sli/.hdr")


def _to_nm(wl: np.ndarray, units: str = "") -> np.ndarray | None:
    """nm from values in ``units`` read as words (:mod:`xr_unmix._units`); ``None`` for band numbers."""
    return to_nm(wl, wavelength_unit(units))


def _read_csv(path: Path) -> xr.DataArray:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and not r[0].lstrip().startswith("#")]
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                         f"{exc.start}); save the CSV as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from exc
    if len(rows) < 3 or len(rows[0]) < 2:
        raise ValueError(f"{path}: expected a header row, a wavelength column and at least one "
                         "endmember column")
    header = [h.strip() for h in rows[0]]
    try:
        data = np.array([[float(v) for v in r] for r in rows[1:]], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: non-numeric value in the data rows ({exc})") from exc
    if data.shape[1] != len(header):
        raise ValueError(f"{path}: {len(header)} header columns but {data.shape[1]} data columns")
    # the first column's header states its unit as a word: "wavelength_um", "Wavelength (nm)";
    # "band" / "band_number" / "index" mean band numbers (no wavelength coordinate)
    return _spectra_da(data[:, 1:], header[1:], _to_nm(data[:, 0], header[0]), str(path))


def _parse_envi_header(text: str) -> dict[str, str]:
    if not text.lstrip().startswith("ENVI"):
        raise ValueError("not an ENVI header (it must start with 'ENVI')")
    out: dict[str, str] = {}
    for m in re.finditer(r"^\s*([^=\n]+?)\s*=\s*(\{[^}]*\}|[^\n]*)", text, flags=re.M):
        out[m.group(1).strip().lower()] = m.group(2).strip()
    return out


def _envi_list(value: str) -> list[str]:
    return [v.strip() for v in value.strip("{}").split(",") if v.strip()]


def _read_envi(path: Path) -> xr.DataArray:
    hdr = path if path.suffix.lower() == ".hdr" else path.with_suffix(".hdr")
    if not hdr.exists():
        alt = Path(str(path) + ".hdr")
        if not alt.exists():
            raise FileNotFoundError(f"no ENVI header beside {path} (looked for {hdr} and {alt})")
        hdr = alt
    h = _parse_envi_header(hdr.read_text(errors="replace"))
    data_file = path if path.suffix.lower() != ".hdr" else next(
        (p for p in (hdr.with_suffix(s) for s in (".sli", ".lib", ".dat", "")) if p.exists()), None)
    if data_file is None or not data_file.exists():
        raise FileNotFoundError(f"no spectral library data file beside {hdr}")
    try:
        n_bands = int(h["samples"])
        n_spectra = int(h["lines"])
        dtype = np.dtype(_ENVI_DTYPES[int(h.get("data type", "4"))])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{hdr}: incomplete ENVI spectral-library header ({exc})") from exc
    dtype = dtype.newbyteorder(">" if h.get("byte order", "0").strip() == "1" else "<")
    offset = int(h.get("header offset", "0"))
    raw = np.fromfile(data_file, dtype=dtype, offset=offset)
    if raw.size != n_bands * n_spectra:
        raise ValueError(f"{data_file}: {raw.size} values, header says {n_spectra} x {n_bands}")
    values = raw.reshape(n_spectra, n_bands).T.astype(np.float64)
    scale = float(h.get("reflectance scale factor", "1") or 1)
    if scale not in (0.0, 1.0):
        values = values / scale
    names = _envi_list(h.get("spectra names", "")) or [f"em{i}" for i in range(n_spectra)]
    if len(names) != n_spectra:
        raise ValueError(f"{hdr}: {len(names)} spectra names for {n_spectra} spectra")
    wl = None
    if "wavelength" in h:
        wl = _to_nm(np.array([float(v) for v in _envi_list(h["wavelength"])]),
                    h.get("wavelength units", ""))
        if wl is not None and wl.size != n_bands:
            raise ValueError(f"{hdr}: {wl.size} wavelengths for {n_bands} bands")
    return _spectra_da(values, names, wl, str(path))


def write_endmembers(endmembers: Any, path: PathLike) -> Path:
    """Write endmembers as CSV (``wavelength`` column in nm, or ``band`` numbers, then one per endmember)."""
    E = as_endmembers(endmembers)
    path = Path(path)
    first = "wavelength" if "wavelength" in E.coords else "band"
    col = E.coords[first].values if first in E.coords else np.arange(1, E.sizes["band"] + 1)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([first, *[str(n) for n in E.endmember.values]])
        for x, row in zip(col, E.values, strict=True):
            w.writerow([repr(float(x)), *[repr(float(v)) for v in row]])
    return path


def resample_spectra(spectra: Any, wavelengths: Any) -> xr.DataArray:
    """Linearly interpolate spectra onto other band centres.

    Parameters
    ----------
    spectra : DataArray (band, endmember) with a ``wavelength`` coordinate (nm)
        Need not be sorted (AVIRIS overlaps are handled by sorting first).
    wavelengths : array (n,) in nm, or a cube DataArray with a ``wavelength`` coordinate
        The target band centres.

    Returns
    -------
    DataArray (band, endmember), ``n`` bands, the target wavelengths as coordinate.

    Raises
    ------
    ValueError
        When ``spectra`` has no wavelengths, or when a target wavelength lies outside the spectra's
        range (no extrapolation) — the message gives both ranges.
    """
    E = as_endmembers(spectra)
    if "wavelength" not in E.coords:
        raise ValueError("the spectra have no 'wavelength' coordinate to resample from")
    if isinstance(wavelengths, xr.DataArray):
        if "wavelength" not in wavelengths.coords:
            raise ValueError("the target has no 'wavelength' coordinate")
        target = np.asarray(wavelengths.coords["wavelength"].values, dtype=np.float64)
    else:
        target = np.asarray(wavelengths, dtype=np.float64).ravel()
    src = np.asarray(E.coords["wavelength"].values, dtype=np.float64)
    order = np.argsort(src, kind="stable")
    src, vals = src[order], E.values[order]
    lo, hi = src[0], src[-1]
    outside = (target < lo - 1e-6) | (target > hi + 1e-6)
    if outside.all():
        raise ValueError(f"the target wavelengths ({target.min():.1f}-{target.max():.1f} nm) do not "
                         f"overlap the spectra's ({lo:.1f}-{hi:.1f} nm)")
    if outside.any():
        raise ValueError(f"{int(outside.sum())} target wavelengths lie outside the spectra's range "
                         f"{lo:.1f}-{hi:.1f} nm (target {target.min():.1f}-{target.max():.1f} nm); "
                         "subset the cube's bands first")
    out = np.stack([np.interp(target, src, vals[:, j]) for j in range(vals.shape[1])], axis=1)
    res = xr.DataArray(
        out, dims=("band", "endmember"),
        coords={"band": np.arange(1, target.size + 1), "wavelength": ("band", target),
                "endmember": E.endmember.values},
        name=E.name, attrs={**E.attrs, "resampled": 1},
    )
    if isinstance(wavelengths, xr.DataArray) and "band" in wavelengths.coords:
        res = res.assign_coords(band=wavelengths.coords["band"].values)
    return res
