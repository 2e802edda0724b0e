"""Scores for abundances and endmembers, as the unmixing literature reports them.

All functions take numpy arrays or DataArrays. Abundance arrays have the endmember axis first
(``(R, ...)``, e.g. ``(endmember, y, x)`` or ``(R, n_pixels)``); spectra have bands first (``(bands, R)``).
NaN pixels (any endmember NaN) are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
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


# -- pairing estimated endmembers with reference ones -----------------------------------------------

@dataclass(frozen=True)
class MatchResult:
    """Pairing of estimated endmembers with reference endmembers, from :func:`match`.

    Attributes
    ----------
    permutation : ndarray (n_ref,), int
        ``permutation[j]`` is the column of ``estimated`` paired with reference ``j``; ``-1`` when
        there are fewer estimated than reference endmembers and reference ``j`` is left unpaired.
    sad : ndarray (n_ref,), float
        Spectral angle (radians) between reference ``j`` and its estimated partner (NaN if unpaired).
    mean_sad : float
        Mean of ``sad`` over the paired references, radians (the literature's "mSAD").
    reference_names, estimated_names : tuple of str
    angles : ndarray (n_ref, n_est)
        All pairwise spectral angles, radians.
    """

    permutation: np.ndarray
    sad: np.ndarray
    mean_sad: float
    reference_names: tuple[str, ...]
    estimated_names: tuple[str, ...]
    angles: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python summary: ``{reference name: (estimated name, sad)}`` plus ``mean_sad``."""
        pairs = {r: ((self.estimated_names[k] if k >= 0 else None), float(s))
                 for r, k, s in zip(self.reference_names, self.permutation, self.sad, strict=True)}
        return {"pairs": pairs, "mean_sad": self.mean_sad,
                "permutation": [int(k) for k in self.permutation]}

    def _perm(self) -> np.ndarray:
        if (self.permutation < 0).any():
            missing = [n for n, k in zip(self.reference_names, self.permutation, strict=True) if k < 0]
            raise ValueError(f"references {missing} have no estimated partner; cannot reorder")
        return self.permutation

    def reorder_abundances(self, abundance: Any) -> Any:
        """Put estimated abundances in the reference order, so they compare entry by entry.

        Parameters
        ----------
        abundance : DataArray with an ``endmember`` dim (renamed to the reference names), or an
            array ``(n_est, ...)`` with the endmember axis first.

        Returns
        -------
        Same type, ``n_ref`` endmembers: entry ``j`` is the abundance of ``estimated[permutation[j]]``.
        Extra (unpaired) estimated endmembers are dropped.
        """
        perm = self._perm()
        if isinstance(abundance, xr.DataArray):
            out = abundance.isel(endmember=perm)
            return out.assign_coords(endmember=np.array(self.reference_names, dtype=object))
        return np.asarray(abundance)[perm]

    def reorder_endmembers(self, estimated: Any) -> Any:
        """Put estimated spectra in the reference order.

        Parameters
        ----------
        estimated : DataArray (band, endmember) (renamed to the reference names, original names kept
            in an ``estimated_name`` coordinate), or an array ``(bands, n_est)``.
        """
        perm = self._perm()
        if isinstance(estimated, xr.DataArray):
            out = estimated.isel(endmember=perm)
            return out.assign_coords(
                estimated_name=("endmember", np.array(out.endmember.values, dtype=object)),
                endmember=np.array(self.reference_names, dtype=object))
        return np.asarray(estimated)[:, perm]


def _spectra_and_names(a: Any, what: str) -> tuple[np.ndarray, tuple[str, ...]]:
    if isinstance(a, xr.DataArray):
        if "band" not in a.dims:
            raise ValueError(f"{what} needs a 'band' dim; it has dims {a.dims}")
        if a.ndim == 1:
            a = a.expand_dims(endmember=["em0"])
        a = a.transpose("band", ...)
        if a.ndim != 2:
            raise ValueError(f"{what} must be (band, endmember); it has dims {a.dims}")
        other = a.dims[1]
        names = (tuple(str(n) for n in a.coords[other].values) if other in a.coords
                 else tuple(f"em{i}" for i in range(a.shape[1])))
        return np.asarray(a.values, dtype=np.float64), names
    v = np.asarray(a, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2:
        raise ValueError(f"{what} must be 2-D (bands, n_endmembers); got shape {v.shape}")
    return v, tuple(f"em{i}" for i in range(v.shape[1]))


def match(estimated: Any, reference: Any) -> MatchResult:
    """Pair estimated endmembers with reference ones by the Hungarian method on spectral angle.

    The pairing minimises the sum of spectral angles over one-to-one pairs
    (:func:`scipy.optimize.linear_sum_assignment`), the way blind unmixing results are scored in the
    literature. Spectral angle ignores scale, so endmembers on another reflectance scale still match.

    Parameters
    ----------
    estimated : DataArray (band, endmember) or array (bands, n_est)
    reference : DataArray (band, endmember) or array (bands, n_ref)
        Same band count as ``estimated`` (resample first otherwise). ``n_est`` may differ from
        ``n_ref``: the extra estimated endmembers stay unpaired, or the extra references get
        ``permutation = -1`` and ``sad = NaN``.

    Returns
    -------
    MatchResult
        ``permutation`` (index of the estimated partner of each reference), per-reference ``sad``,
        ``mean_sad`` (radians), and ``reorder_abundances`` / ``reorder_endmembers`` to put estimated
        abundance maps or spectra in the reference order.

    Examples
    --------
    >>> m = match(E_vca, E_ref)                       # doctest: +SKIP
    >>> A_ref_order = m.reorder_abundances(A_vca)      # doctest: +SKIP
    >>> rmse(A_ref_order, A_ref)                       # doctest: +SKIP
    """
    from scipy.optimize import linear_sum_assignment

    E, est_names = _spectra_and_names(estimated, "estimated")
    M, ref_names = _spectra_and_names(reference, "reference")
    if E.shape[0] != M.shape[0]:
        raise ValueError(f"estimated has {E.shape[0]} bands but reference has {M.shape[0]}; "
                         "resample one onto the other's wavelengths first")
    if not (np.isfinite(E).all() and np.isfinite(M).all()):
        raise ValueError("the spectra contain NaN/inf")
    En = E / np.linalg.norm(E, axis=0)
    Mn = M / np.linalg.norm(M, axis=0)
    angles = np.arccos(np.clip(Mn.T @ En, -1.0, 1.0))  # (n_ref, n_est)
    rows, cols = linear_sum_assignment(angles)
    perm = np.full(M.shape[1], -1, dtype=np.int64)
    perm[rows] = cols
    sads = np.full(M.shape[1], np.nan)
    sads[rows] = angles[rows, cols]
    return MatchResult(perm, sads, float(np.nanmean(sads)), ref_names, est_names, angles)
