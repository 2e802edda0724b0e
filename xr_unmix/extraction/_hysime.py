"""HySime (Bioucas-Dias & Nascimento, 2008): the number of endmembers from the uncentred correlation."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from .._cube import prepare_cube
from ._blocks import _Source, _stats, _top_eigvecs


def _regression(corr_sum: np.ndarray) -> np.ndarray:
    """HySime's multiple-regression matrix ``B`` (bands x bands, zero diagonal): band ``i``'s noise
    is ``y_i - B[i] @ y``, from the uncentred correlation ``sum_j y_j y_j^T``."""
    L = corr_sum.shape[0]
    RR = corr_sum
    small = 1e-6 * np.trace(RR) / L  # the reference code adds 1e-6 I; scaled here to the data
    RRi = np.linalg.inv(RR + small * np.eye(L))
    B = np.zeros((L, L))
    for i in range(L):
        XX = RRi - np.outer(RRi[:, i], RRi[i, :]) / RRi[i, i]
        RRa = RR[:, i].copy()
        RRa[i] = 0.0
        beta = XX @ RRa
        beta[i] = 0.0
        B[i] = beta  # noise of band i: w_i = y_i - beta^T y
    return B


def noise_sigma(Y: np.ndarray) -> float:
    """RMS noise level of spectra ``Y`` ``(n_pixels, bands)`` (finite rows), reflectance units.

    HySime's noise estimate (Bioucas-Dias & Nascimento, 2008): each band regressed on all the others,
    the noise variance of a band being that of its regression residual; returns the square root of the
    mean variance over bands (for white noise of standard deviation ``s``: about ``s``).
    """
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2 or Y.shape[0] < 2:
        raise ValueError(f"Y must be (n_pixels >= 2, bands); got shape {Y.shape}")
    IB = np.eye(Y.shape[1]) - _regression(Y.T @ Y)
    W = Y @ IB.T  # the residual of every band's regression
    return float(np.sqrt(np.mean(W * W)))


def _hysime_from_corr(corr_sum: np.ndarray, count: int) -> tuple[int, np.ndarray, dict[str, Any]]:
    """HySime on the uncentred correlation ``sum_j y_j y_j^T`` of ``count`` pixels."""
    L = corr_sum.shape[0]
    RR = corr_sum
    B = _regression(RR)
    Ry = RR / count
    IB = np.eye(L) - B
    Rn = np.diag(np.diag(IB @ Ry @ IB.T))  # additive noise, diagonal covariance
    Rx = B @ Ry @ B.T  # signal x = y - w = B y
    Rn = Rn + np.trace(Rx) / L / 1e5 * np.eye(L)
    dx, Ex = _top_eigvecs(Rx, L)
    Py = np.einsum("ij,jk,ki->i", Ex.T, Ry, Ex)
    Pn = np.einsum("ij,jk,ki->i", Ex.T, Rn, Ex)
    cost = -Py + 2 * Pn
    k = int((cost < 0).sum())
    order = np.argsort(cost)
    return k, Ex[:, order[:k]], {"cost": cost, "noise_var": np.diag(Rn)}


def hysime(Y: Any) -> tuple[int, np.ndarray]:
    """Hyperspectral signal subspace identification by minimum error (Bioucas-Dias & Nascimento, 2008).

    Estimates the noise of every band by multiple regression on the other bands, then keeps the
    eigenvectors of the signal correlation whose projected data power exceeds twice the projected
    noise power (the minimum mean-squared-error subspace).

    Parameters
    ----------
    Y : array (bands, pixels), NumPy or Dask. Columns holding NaN/inf are ignored.

    Returns
    -------
    k : int
        Estimated signal-subspace dimension (the number of endmembers under the linear model).
    Ek : ndarray (bands, k)
        An orthonormal basis of the subspace, by increasing cost.
    """
    if not hasattr(Y, "dask"):
        Y = np.asarray(Y)
    if Y.ndim != 2:
        raise ValueError(f"Y must be 2-D (bands, pixels); got shape {Y.shape}")
    st = _stats(_Source(Y))
    k, Ek, _ = _hysime_from_corr(st.corr, st.count)
    return k, Ek


def estimate_n_endmembers(cube: xr.DataArray, *, method: str = "hysime") -> int:
    """Estimate the number of endmembers in a cube.

    Parameters
    ----------
    cube : DataArray (band, y, x), any dim order, NumPy- or Dask-backed
        Pixels with NaN or nodata in any band are ignored. A Dask cube is read once, block by block.
    method : {"hysime"}
        HySime (Bioucas-Dias & Nascimento, 2008): the dimension of the minimum-error signal subspace.

    Returns
    -------
    int
        HySime's subspace dimension. On real scenes it often exceeds the number of materials a
        human would name (spectral variability adds dimensions); treat it as an upper guide.

    Raises
    ------
    ValueError
        Unknown method, or no valid pixel.
    """
    if method != "hysime":
        raise ValueError(f"unknown method {method!r}: the only method is 'hysime'")
    data, _ = prepare_cube(cube, np.float32)
    st = _stats(_Source(data))
    if st.count < 2:
        raise ValueError(f"HySime needs at least 2 valid pixels, the cube has {st.count}")
    k, _, _ = _hysime_from_corr(st.corr, st.count)
    return k
