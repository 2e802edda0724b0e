"""VCA (Nascimento & Bioucas-Dias, 2005) over a :class:`~._blocks._Source` (see the package notes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._blocks import _BATCH, BlockFn, _Source, _stats, _top_eigvecs

#: Up to this many bytes, VCA keeps every valid pixel's projected coordinates (float64, ``n`` per
#: pixel) in memory: two passes over the cube instead of ``n + 1``.
_CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class VCAResult:
    """What :func:`vca` found, beyond the endmembers."""

    indices: np.ndarray  #: (n,) flat pixel indices of the chosen pixels
    snr_db: float  #: the SNR used to choose the projection (estimated unless given), dB
    snr_estimated: bool
    projection: str  #: ``"projective"`` (high SNR, ``n`` dims) or ``"pca"`` (low SNR, ``n - 1`` dims)
    n_pixels: int  #: valid pixels the search ran over


def _check_n(n: int, n_bands: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TypeError(f"n (the number of endmembers) must be an int, got {type(n).__name__}")
    n = int(n)
    if n < 2:
        raise ValueError(f"n must be at least 2 endmembers, got {n}")
    if n > n_bands:
        raise ValueError(f"n={n} endmembers is more than the cube's {n_bands} bands: VCA can find at "
                         f"most as many endmembers as there are bands")
    return n


class _Projector:
    """Maps raw spectra ``(L, k)`` to VCA's coordinates ``x`` ``(d, k)`` and ``y`` space ``(p, k)``."""

    def __init__(self, Ud: np.ndarray, mode: str, r_m: np.ndarray, u: np.ndarray | None,
                 c: float | None) -> None:
        self.Ud, self.mode, self.r_m, self.u, self.c = Ud, mode, r_m, u, c

    def coords(self, Yb: np.ndarray) -> np.ndarray:
        """``Ud^T y`` (projective) or ``Ud^T (y - mean)`` (PCA), float64, in batches of pixels."""
        out = np.empty((self.Ud.shape[1], Yb.shape[1]))
        shift = self.r_m[:, None] if self.mode == "pca" else 0.0
        for s in range(0, Yb.shape[1], _BATCH):
            out[:, s:s + _BATCH] = self.Ud.T @ (np.asarray(Yb[:, s:s + _BATCH], np.float64) - shift)
        return out

    def finish(self, x: np.ndarray, inplace: bool = False) -> np.ndarray:
        """VCA's ``y`` from the coordinates: ``x / (u^T x)`` (projective; done in place when asked) or
        ``[x; c]`` (PCA; with ``inplace`` the coordinates are returned unchanged and :meth:`score`
        adds the constant row)."""
        if self.mode == "projective":
            with np.errstate(divide="ignore", invalid="ignore"):
                den = self.u @ x
                y = np.divide(x, den, out=x if inplace else None)
            y[:, ~np.isfinite(y).all(axis=0)] = 0.0  # a pixel orthogonal to the mean: never chosen
            return y
        if inplace:
            return x
        return np.vstack([x, np.full((1, x.shape[1]), self.c)])

    def score(self, f: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``f^T y`` for ``y`` from ``finish(..., inplace=True)``."""
        if self.mode == "projective":
            return f @ y
        return f[:-1] @ y + f[-1] * self.c

    def __call__(self, Yb: np.ndarray) -> np.ndarray:
        return self.finish(self.coords(Yb))

    def denoise(self, Yb: np.ndarray) -> np.ndarray:
        """The chosen pixels projected on the signal subspace (VCA's ``Rp`` columns), ``(L, k)``."""
        Y64 = np.asarray(Yb, dtype=np.float64)
        if self.mode == "projective":
            return self.Ud @ (self.Ud.T @ Y64)
        return self.Ud @ (self.Ud.T @ (Y64 - self.r_m[:, None])) + self.r_m[:, None]


class _Coords:
    """Block function: (flat indices, VCA coordinates) of the block's valid pixels."""

    def __init__(self, proj: _Projector) -> None:
        self.proj = proj

    def __call__(self, Yb: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return idx, self.proj.coords(Yb)


def _max_norm(proj_Ud: np.ndarray, r_m: np.ndarray) -> BlockFn:
    def fn(Yb: np.ndarray, idx: np.ndarray) -> float:
        if Yb.shape[1] == 0:
            return 0.0
        x = _Projector(proj_Ud, "pca", r_m, None, None).coords(Yb)
        return float(np.sqrt((x**2).sum(axis=0).max()))
    return fn


class _Best:
    """Block function: the pixel maximising ``|f^T y|``, as ``(value, flat index, spectrum)``."""

    def __init__(self, proj: _Projector, f: np.ndarray) -> None:
        self.proj, self.f = proj, f

    def __call__(self, Yb: np.ndarray, idx: np.ndarray) -> tuple[float, int, np.ndarray | None]:
        if Yb.shape[1] == 0:
            return (-1.0, -1, None)
        v = np.abs(self.f @ self.proj(Yb))
        k = int(np.argmax(v))
        return (float(v[k]), int(idx[k]), np.array(Yb[:, k], dtype=np.float64))

    @staticmethod
    def combine(a: tuple[float, int, Any], b: tuple[float, int, Any]) -> tuple[float, int, Any]:
        if a[1] < 0:
            return b
        if b[1] < 0:
            return a
        if a[0] > b[0] or (a[0] == b[0] and a[1] < b[1]):
            return a
        return b


def _vca_source(src: _Source, n: int, seed: int | np.random.Generator | None,
                snr: float | None) -> tuple[np.ndarray, VCAResult]:
    L = src.n_bands
    p = _check_n(n, L)
    st = _stats(src)
    N = st.count
    if N < p:
        raise ValueError(f"only {N} valid pixels for n={p} endmembers")
    r_m = st.total / N
    corr = st.corr / N  # uncentred correlation R R^T / N
    cov = corr - np.outer(r_m, r_m)
    if snr is None:
        lam, _ = _top_eigvecs(cov, p)
        P_y = np.trace(corr)
        P_x = lam.sum() + r_m @ r_m
        with np.errstate(divide="ignore", invalid="ignore"):
            snr_db = float(10 * np.log10((P_x - p / L * P_y) / (P_y - P_x)))
        if np.isnan(snr_db):  # noise power <= 0 (exact data) or signal power <= 0: decide by sign
            snr_db = float(np.inf) if P_y - P_x <= 0 else float(-np.inf)
        estimated = True
    else:
        snr_db, estimated = float(snr), False
    snr_th = 15 + 10 * np.log10(p)
    cached = p * N * 8 <= _CACHE_BYTES
    if snr_db < snr_th:
        mode = "pca"
        _, Ud = _top_eigvecs(cov, p - 1)
        proj = _Projector(Ud, mode, r_m, None, None)
    else:
        mode = "projective"
        _, Ud = _top_eigvecs(corr, p)
        proj = _Projector(Ud, mode, r_m, Ud.T @ r_m, None)
    if cached:  # one pass: every valid pixel's coordinates, kept in memory block by block
        parts = [q for q in src.map_collect(_Coords(proj)) if q[0].size]
        if mode == "pca":
            proj.c = max(float(np.sqrt((q[1] ** 2).sum(axis=0).max())) for q in parts)
        parts = [(q_idx, proj.finish(q_x, inplace=True)) for q_idx, q_x in parts]
    elif mode == "pca":
        proj.c = src.map_reduce(_max_norm(Ud, r_m), max)
    rng = np.random.default_rng(seed)
    A = np.zeros((p, p))
    A[p - 1, 0] = 1.0
    indices = np.zeros(p, dtype=np.int64)
    spectra = np.zeros((L, p))
    for i in range(p):
        w = rng.random(p)
        f = w - A @ (np.linalg.pinv(A) @ w)
        f /= np.linalg.norm(f)
        if cached:
            best: tuple[float, int, np.ndarray] = (-1.0, -1, np.zeros(0))
            for q_idx, q_y in parts:
                v = np.abs(proj.score(f, q_y))
                m = float(v.max())
                ties = np.flatnonzero(v == m)
                j = int(ties[np.argmin(q_idx[ties])])  # same tie rule as the streaming search
                if m > best[0] or (m == best[0] and q_idx[j] < best[1]):
                    best = (m, int(q_idx[j]), q_y[:, j])
            indices[i] = best[1]
            A[:, i] = best[2] if mode == "projective" else np.append(best[2], proj.c)
        else:  # one pass per endmember; each block returns its best pixel and its spectrum
            _, k, spec = src.map_reduce(_Best(proj, f), _Best.combine)
            indices[i] = k
            spectra[:, i] = spec
            A[:, i] = proj(spec[:, None])[:, 0]
    if cached:
        spectra = src.points(indices)
    E = proj.denoise(spectra)
    return E, VCAResult(indices, snr_db, estimated, mode, N)


def vca(Y: Any, n: int, *, seed: int | np.random.Generator | None = None,
        snr: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vertex Component Analysis (Nascimento & Bioucas-Dias, 2005).

    Projects the data on the signal subspace (projective projection onto ``n`` dims when the SNR is at
    least ``15 + 10 log10(n)`` dB, PCA onto ``n - 1`` dims plus a constant coordinate otherwise), then
    picks ``n`` pixels one at a time as the extreme projection of the data onto a random direction
    orthogonal to the pixels already chosen.

    Parameters
    ----------
    Y : array (bands, pixels), NumPy or Dask
        Spectra in columns, any reflectance scale. Columns holding NaN/inf are ignored.
    n : int
        Number of endmembers, ``2 <= n <= bands``.
    seed : int or numpy.random.Generator, optional
        Seeds the random directions. Same seed, same data: same pixels.
    snr : float, optional
        Known SNR in dB; estimated from the data when omitted (the paper's estimator).

    Returns
    -------
    E : ndarray (bands, n), float64
        The chosen pixels projected on the estimated signal subspace (the paper's ``Rp(:, indices)``:
        this removes most of the noise); same units as ``Y``.
    indices : ndarray (n,), int
        Columns of ``Y`` the endmembers came from, in the order they were found.

    Raises
    ------
    ValueError
        ``n < 2``, ``n > bands``, no valid column, or fewer valid columns than ``n``.
    """
    if not hasattr(Y, "dask"):
        Y = np.asarray(Y)
    if Y.ndim != 2:
        raise ValueError(f"Y must be 2-D (bands, pixels); got shape {Y.shape}")
    E, info = _vca_source(_Source(Y), n, seed, snr)
    return E, info.indices
