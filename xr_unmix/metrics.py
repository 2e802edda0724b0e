"""Scores for abundances and endmembers, as the unmixing literature reports them.

All functions take numpy arrays or DataArrays. Abundance arrays have the endmember axis first
(``(R, ...)``, e.g. ``(endmember, y, x)`` or ``(R, n_pixels)``); spectra have bands first (``(bands, R)``).
NaN pixels (any endmember NaN) are ignored.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr


def _values(a: Any, first: str | None = None) -> np.ndarray:
    if isinstance(a, xr.DataArray):
        if first is not None and first in a.dims:
            a = a.transpose(first, ...)
        return np.asarray(a.values, dtype=np.float64)
    return np.asarray(a, dtype=np.float64)


def _pixels(a: Any) -> np.ndarray:
    """(R, ...) -> (R, n_pixels)."""
    v = _values(a, "endmember")
    return v.reshape(v.shape[0], -1)


def rmse(estimate: Any, truth: Any) -> float:
    """Abundance RMSE over all pixels and endmembers.

    ``sqrt(mean((A_hat - A)^2))`` over every (endmember, pixel) entry, the definition of the U-ADMM-AENet
    and DEQ-Unmix papers' aRMSE tables. Pixels that are NaN in either input are skipped.

    Parameters
    ----------
    estimate, truth : array (R, ...) or DataArray with an ``endmember`` dim
    """
    e, t = _pixels(estimate), _pixels(truth)
    if e.shape != t.shape:
        raise ValueError(f"shapes differ: estimate {e.shape}, truth {t.shape} (endmembers first)")
    ok = np.isfinite(e).all(0) & np.isfinite(t).all(0)
    if not ok.any():
        raise ValueError("no pixel is finite in both inputs")
    return float(np.sqrt(np.mean((e[:, ok] - t[:, ok]) ** 2)))


def rmse_per_endmember(estimate: Any, truth: Any) -> np.ndarray:
    """RMSE of each endmember's abundance map, shape (R,)."""
    e, t = _pixels(estimate), _pixels(truth)
    ok = np.isfinite(e).all(0) & np.isfinite(t).all(0)
    return np.sqrt(np.mean((e[:, ok] - t[:, ok]) ** 2, axis=1))


def sad(spectra_a: Any, spectra_b: Any) -> np.ndarray | float:
    """Spectral angle distance in radians, column by column.

    Parameters
    ----------
    spectra_a, spectra_b : array (bands,) or (bands, R), or DataArray with a ``band`` dim

    Returns
    -------
    float for single spectra, else array (R,)
    """
    a, b = _values(spectra_a, "band"), _values(spectra_b, "band")
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape} (bands first)")
    num = (a * b).sum(0)
    den = np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ang = np.arccos(np.clip(num / den, -1.0, 1.0))
    return float(ang) if np.ndim(ang) == 0 else ang


def reconstruction_error(cube: Any, endmembers: Any, abundance: Any) -> Any:
    """Per-pixel RMS reconstruction error ``sqrt(mean_b (y - E a)^2)``, a quality layer for the map.

    Parameters
    ----------
    cube : DataArray (band, y, x) or array (bands, ...)
    endmembers : DataArray (band, endmember) or array (bands, R)
    abundance : DataArray (endmember, y, x) or array (R, ...)

    Returns
    -------
    DataArray (y, x) (lazy if the inputs are) when given DataArrays, else an array of the pixel shape.
    Units: those of the cube. NaN where the pixel is invalid.
    """
    if isinstance(cube, xr.DataArray) and isinstance(abundance, xr.DataArray):
        E = endmembers
        if not isinstance(E, xr.DataArray):
            E = xr.DataArray(np.asarray(E), dims=("band", "endmember"),
                             coords={"endmember": abundance.endmember.values})
        E = E.transpose("band", "endmember").assign_coords(endmember=abundance.endmember.values)
        E = E.drop_vars([c for c in E.coords if c not in ("endmember",)])
        recon = xr.dot(E, abundance, dim="endmember")
        y = cube.astype(np.float64).drop_vars([c for c in cube.coords if "band" in cube[c].dims])
        err = np.sqrt(((y - recon.drop_vars([c for c in recon.coords if "band" in recon[c].dims]))
                       ** 2).mean("band", skipna=False))
        err.name = "reconstruction_rmse"
        err.attrs = {"long_name": "per-pixel RMS reconstruction error", "units": "cube units"}
        return err
    Y = _values(cube)
    Ev = _values(endmembers)
    A = _values(abundance)
    recon = np.tensordot(Ev, A, axes=(1, 0))
    return np.sqrt(np.mean((Y - recon) ** 2, axis=0))


def reconstruction_rmse(cube: Any, endmembers: Any, abundance: Any) -> float:
    """Scene-wide RMS reconstruction error ``sqrt(mean (Y - E A)^2)`` over valid pixels and bands."""
    err = reconstruction_error(cube, endmembers, abundance)
    v = np.asarray(err.values if isinstance(err, xr.DataArray) else err)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no valid pixel")
    return float(np.sqrt(np.mean(v**2)))
