"""Endmember spectra in and out: CSV and ENVI spectral libraries, and resampling onto a cube's bands."""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ._cube import as_endmembers
from ._units import to_nm, wavelength_unit
from .errors import InputError, ParameterError

PathLike = str | os.PathLike[str]

_ENVI_DTYPES = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4", 14: "i8", 15: "u8"}


def _unique_names(names: list[str]) -> list[str]:
    """Library names made unique: a repeated ``ash`` becomes ``ash#2``, ``ash#3`` (real libraries,
    earthlib's among them, repeat names)."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def _spectra_da(values: np.ndarray, names: list[str], wavelengths: np.ndarray | None,
                source: str, *, library: bool = False) -> xr.DataArray:
    if library:
        names = _unique_names(names)
    coords: dict[str, Any] = {"band": np.arange(1, values.shape[0] + 1),
                              "endmember": np.array(names, dtype=object)}
    if wavelengths is not None:
        coords["wavelength"] = ("band", np.asarray(wavelengths, dtype=np.float64))
    da = xr.DataArray(values, dims=("band", "endmember"), coords=coords, name="endmembers",
                      attrs={"source": source})
    return as_endmembers(da)


def read_endmembers(path: PathLike, *, scale: float | None = None,
                    classes: Sequence[str] | Mapping[str, str] | None = None,
                    class_column: str | None = None) -> xr.DataArray:
    """Read endmember spectra, or a spectral library with classes, from CSV or ENVI.

    Parameters
    ----------
    path : str or path
        - ``.csv`` **column-wise**: a header row; the first column is the wavelength (its unit read from
          the header's words, e.g. ``wavelength_um``; without one, values all < 30 are micrometres), then
          one column per endmember, named in the header.
        - ``.csv`` **row-wise** (EMIT / SpectralUnmixing, VIPER/MESMA libraries): one spectrum per row;
          a class column (header ``Class`` or ``Type``, any case, or ``class_column``), then one column
          per wavelength, the header cells being the wavelengths. A ``Name``/``ID``/``Spectrum`` column
          names the spectra (else ``<class>_<n>``); any other non-numeric header becomes a coordinate
          along ``endmember``. A UTF-8 byte-order mark is skipped.
        - ``.sli`` / ``.hdr`` (ENVI spectral library): the binary file and its header; names from
          ``spectra names``, wavelengths from ``wavelength`` (``wavelength units`` honoured),
          ``reflectance scale factor`` applied.
    scale : float, optional
        Multiply the values by this (``1e-4`` for reflectance x 10000, ``1`` to keep them as they are);
        recorded in ``attrs["scale_applied"]``. Default: for a row-wise class library, detected --
        a maximum of at most 2 is reflectance (0-1), one in (100, 15000] is reflectance x 10000 and
        scaled by 1e-4 with a :class:`UserWarning`, any other (2-100: percent or x 10000?) is an
        :class:`~xr_unmix.errors.InputError` asking for ``scale``. Column-wise CSV and ENVI values
        are kept as stored (ENVI's ``reflectance scale factor`` applied), as before.
    classes : sequence of str (one per spectrum) or mapping name -> class, optional
        Classes for a file that has none (column-wise CSV, ENVI), or to override the file's.
    class_column : str, optional
        The row-wise CSV column that holds the classes (default: ``Class`` or ``Type``).

    Returns
    -------
    DataArray (band, endmember)
        Reflectance, ``endmember`` names, a ``wavelength`` coordinate (nm) and, for a library with
        classes, a ``class`` coordinate on ``endmember``: every estimator keeps it, so
        ``ab.groupby("class").sum()`` gives class fractions.

    Raises
    ------
    FileNotFoundError, InputError
        No file; an unreadable, non-UTF-8 or ragged CSV; a scale that cannot be told.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no endmember file at {path}")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        E = _read_csv(path, class_column)
    elif suffix in (".sli", ".hdr", ".lib"):
        E = _read_envi(path)
    else:
        raise ValueError(f"{path}: unknown endmember file type {suffix!r}; use .csv or an ENVI "
                         ".sli/.hdr")
    if classes is not None:
        E = _assign_classes(E, classes, path)
    if scale is None and not E.attrs.pop("detect_scale", False):
        return E  # column-wise CSV, ENVI: values as stored (ENVI's scale factor applied)
    return _apply_scale(E, scale, path)


def _assign_classes(E: xr.DataArray, classes: Sequence[str] | Mapping[str, str],
                    path: Path) -> xr.DataArray:
    names = [str(n) for n in E.endmember.values]
    if isinstance(classes, Mapping):
        missing = [n for n in names if n not in classes]
        if missing:
            raise InputError(f"{path}: no class given for {len(missing)} spectra, e.g. {missing[0]!r}")
        cls = [str(classes[n]) for n in names]
    else:
        cls = [str(c) for c in classes]
        if len(cls) != len(names):
            raise InputError(f"{path}: {len(cls)} classes for {len(names)} spectra")
    return E.assign_coords({"class": ("endmember", np.array(cls, dtype=object))})


def _apply_scale(E: xr.DataArray, scale: float | None, path: Path) -> xr.DataArray:
    """Scale to reflectance (0-1): the given ``scale``, or one detected from the maximum."""
    if scale is None:
        top = float(np.nanmax(E.values)) if E.size else 0.0
        if top <= 2.0:
            scale = 1.0
        elif 100.0 < top <= 15000.0:
            scale = 1e-4
            warnings.warn(f"{path}: values up to {top:g}, read as reflectance x 10000 and scaled by "
                          "1e-4 (pass scale=1 to keep them as they are)", UserWarning, stacklevel=3)
        else:
            raise InputError(f"{path}: values up to {top:g}: cannot tell reflectance (0-1), percent "
                             "or reflectance x 10000 apart; pass scale= (1e-4 for x 10000, 0.01 for "
                             "percent, 1 to keep the values)")
    try:
        s = float(scale)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"scale must be a number, got {scale!r}") from exc
    if not (np.isfinite(s) and s > 0):
        raise ParameterError(f"scale must be a finite number > 0, got {scale!r}")
    out = E.copy(data=E.values * s) if s != 1.0 else E.copy()
    out.attrs["scale_applied"] = s
    return out


def _to_nm(wl: np.ndarray, units: str = "") -> np.ndarray | None:
    """nm from values in ``units`` read as words (:mod:`xr_unmix._units`); ``None`` for band numbers."""
    return to_nm(wl, wavelength_unit(units))


def _csv_rows(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [r for r in csv.reader(f) if r and not r[0].lstrip().startswith("#")]
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                         f"{exc.start}); save the CSV as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from exc


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_CLASS_HEADERS = ("class", "type")
_NAME_HEADERS = ("name", "id", "spectrum", "spectra", "endmember")


def _read_csv(path: Path, class_column: str | None = None) -> xr.DataArray:
    rows = _csv_rows(path)
    if not rows:
        raise InputError(f"{path}: empty CSV")
    header = [h.strip() for h in rows[0]]
    low = [h.lower() for h in header]
    if class_column is not None or any(h in _CLASS_HEADERS for h in low):
        return _read_rowwise(path, header, rows[1:], class_column)
    if len(rows) < 3 or len(rows[0]) < 2:
        raise ValueError(f"{path}: expected a header row, a wavelength column and at least one "
                         "endmember column (or a row-wise library with a 'Class' column)")
    try:
        data = np.array([[float(v) for v in r] for r in rows[1:]], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: non-numeric value in the data rows ({exc}); a row-wise library "
                         "needs a 'Class' (or 'Type') column, or class_column=") from exc
    if data.shape[1] != len(header):
        raise ValueError(f"{path}: {len(header)} header columns but {data.shape[1]} data columns")
    # the first column's header states its unit as a word: "wavelength_um", "Wavelength (nm)";
    # "band" / "band_number" / "index" mean band numbers (no wavelength coordinate)
    return _spectra_da(data[:, 1:], header[1:], _to_nm(data[:, 0], header[0]), str(path))


def _read_rowwise(path: Path, header: list[str], rows: list[list[str]],
                  class_column: str | None) -> xr.DataArray:
    """One spectrum a row: a class column, wavelength-named columns, optional name/metadata columns."""
    low = [h.lower() for h in header]
    want = class_column.strip().lower() if class_column is not None else None
    ci = (low.index(want) if want in low else -1) if want is not None else next(
        low.index(h) for h in _CLASS_HEADERS if h in low)
    if ci < 0:
        raise InputError(f"{path}: no column {class_column!r} (the header has {header[:6]}...)")
    wl_cols = [i for i, h in enumerate(header) if i != ci and _is_number(h)]
    if not wl_cols:
        raise InputError(f"{path}: a row-wise library needs one column per wavelength, its header "
                         "cell the wavelength; none found")
    if not rows:
        raise InputError(f"{path}: the library has a header but no spectra")
    bad = [k + 2 for k, r in enumerate(rows) if len(r) != len(header)]
    if bad:
        raise InputError(f"{path}: line {bad[0]} has {len(rows[bad[0] - 2])} cells, the header "
                         f"{len(header)}")
    try:
        data = np.array([[float(r[i]) for i in wl_cols] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"{path}: non-numeric value in a wavelength column ({exc})") from exc
    cls = [r[ci].strip() for r in rows]
    empty = [k + 2 for k, c in enumerate(cls) if not c]
    if empty:
        raise InputError(f"{path}: line {empty[0]} has an empty class")
    meta = [i for i in range(len(header)) if i != ci and i not in wl_cols]
    name_col = next((i for i in meta if low[i] in _NAME_HEADERS), None)
    if name_col is not None:
        names = [r[name_col].strip() for r in rows]
    else:
        seen: dict[str, int] = {}
        names = []
        for c in cls:
            seen[c] = seen.get(c, 0) + 1
            names.append(f"{c}_{seen[c]}")
    wl = _to_nm(np.array([float(header[i]) for i in wl_cols]))
    E = _spectra_da(data.T, names, wl, str(path), library=True)
    extra = {header[i]: ("endmember", np.array([r[i].strip() for r in rows], dtype=object))
             for i in meta if i != name_col and header[i] and low[i] not in ("band", "wavelength")}
    E.attrs["detect_scale"] = True
    return E.assign_coords({**extra, "class": ("endmember", np.array(cls, dtype=object))})


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
    stated = "reflectance scale factor" in h
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
    E = _spectra_da(values, names, wl, str(path), library=True)
    if stated:
        E.attrs["scale_applied"] = 1.0 / scale if scale not in (0.0, 1.0) else 1.0
    return E


def write_endmembers(endmembers: Any, path: PathLike) -> Path:
    """Write endmembers as CSV.

    Column-wise (``wavelength`` column in nm, or ``band`` numbers, then one column per endmember); a
    library with a ``class`` coordinate (and wavelengths) row-wise: ``Class``, ``Name``, then one
    column per wavelength (nm), as :func:`read_endmembers` reads it back.
    """
    E = as_endmembers(endmembers)
    path = Path(path)
    first = "wavelength" if "wavelength" in E.coords else "band"
    col = E.coords[first].values if first in E.coords else np.arange(1, E.sizes["band"] + 1)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if "class" in E.coords and first == "wavelength":
            w.writerow(["Class", "Name", *[repr(float(x)) for x in col]])
            for j in range(E.sizes["endmember"]):
                w.writerow([str(E["class"].values[j]), str(E.endmember.values[j]),
                            *[repr(float(v)) for v in E.values[:, j]]])
            return path
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
                "endmember": E.endmember.values,
                **{k: ("endmember", c.values) for k, c in E.coords.items()
                   if c.dims == ("endmember",) and k != "endmember"}},  # class, material, ...
        name=E.name, attrs={**E.attrs, "resampled": 1},
    )
    if isinstance(wavelengths, xr.DataArray) and "band" in wavelengths.coords:
        res = res.assign_coords(band=wavelengths.coords["band"].values)
    return res
