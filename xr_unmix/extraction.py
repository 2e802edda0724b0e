"""Endmember extraction (VCA) and estimation of the number of endmembers (HySime).

Both algorithms need only a handful of statistics of the valid pixels and a few pixels in full, so a
Dask-backed cube is processed block by block and never loaded whole:

- **VCA** (Nascimento & Bioucas-Dias, 2005). One pass accumulates the sum and the uncentred correlation
  ``sum_j y_j y_j^T`` (float64) over the valid pixels; the SNR estimate and the projection (PCA onto
  ``p - 1`` dims below the SNR threshold ``15 + 10 log10(p)`` dB, projective projection onto ``p`` dims
  above it) come from these. A second pass keeps every valid pixel's ``p`` projected coordinates
  (float64) when they fit in ``_CACHE_BYTES`` (256 MiB: 6.7 million pixels at ``p = 5``); the ``p``
  picks are then made in memory and only the ``p`` chosen pixels are read again in full (one chunk
  each). Above that limit the search streams instead: one pass per endmember, each block returning its
  best pixel and that pixel's spectrum (plus one pass for the scale ``c`` at low SNR). Inside a block,
  pixels are converted to float64 ``_BATCH`` at a time, so a task holds little beyond its block.
- With ``sample=k`` the algorithm instead runs on ``k`` valid pixels drawn with a seeded generator
  (one pass computes the ``(y, x)`` validity mask, a second gathers the drawn pixels).
- **HySime** (Bioucas-Dias & Nascimento, 2008) needs only the uncentred correlation: the
  multiple-regression noise estimate, the signal correlation and the subspace-size cost are all
  closed-form functions of it, so it is one pass too.

The same code runs on a NumPy cube (one block) and on a Dask cube (many blocks): for the same seed both
pick the same pixels; the endmembers agree to floating-point summation order (float64 statistics).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from ._cube import BAND, ENDMEMBER, X, Y, prepare_cube

__all__ = ["VCAResult", "endmembers_from_spec", "estimate_n_endmembers", "extract_endmembers", "hysime",
           "is_extraction_spec", "vca"]

# -- blocks: one code path for numpy and dask ---------------------------------------------------------

BlockFn = Callable[[np.ndarray, np.ndarray], Any]  # (Yb (L, nb) valid pixels, flat indices (nb,)) -> r

#: Pixels converted to float64 at a time inside a block (bounds the per-task temporaries).
_BATCH = 32768
#: Up to this many bytes, VCA keeps every valid pixel's projected coordinates (float64, ``n`` per
#: pixel) in memory: two passes over the cube instead of ``n + 1``.
_CACHE_BYTES = 256 * 2**20


def _valid_columns(Yb: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.concatenate([np.isfinite(Yb[:, s:s + _BATCH]).all(axis=0)
                         for s in range(0, Yb.shape[1], _BATCH)] or [np.zeros(0, bool)])
    if ok.all():
        return Yb, idx
    return Yb[:, ok], idx[ok]


def _run_block(block: np.ndarray, y0: int, x0: int, width: int, fn: BlockFn) -> Any:
    """Apply ``fn`` to one ``(L, h, w)`` block of a cube whose rows are ``width`` pixels wide."""
    L, h, w = block.shape
    rows = np.arange(y0, y0 + h)[:, None]
    cols = np.arange(x0, x0 + w)[None, :]
    idx = (rows * width + cols).ravel()
    Yb, idx = _valid_columns(np.asarray(block).reshape(L, h * w), idx)
    return fn(Yb, idx)


class _Source:
    """The valid pixels of a ``(L, N)`` matrix or of a ``(L, H, W)`` NumPy/Dask cube, blockwise.

    ``map_reduce(fn, combine)`` applies ``fn`` to every block's valid pixels and combines the results
    pairwise (a tree under Dask, so only a few partial results and blocks are alive at a time).
    """

    def __init__(self, data: Any) -> None:
        self.data = data
        self.is_dask = hasattr(data, "dask")
        if data.ndim == 2:
            self.n_bands, self.n_pixels = int(data.shape[0]), int(data.shape[1])
            self.width = None
        elif data.ndim == 3:
            self.n_bands = int(data.shape[0])
            self.width = int(data.shape[2])
            self.n_pixels = int(data.shape[1]) * self.width
        else:
            raise ValueError(f"expected a (bands, pixels) or (bands, y, x) array, got shape {data.shape}")

    def _parts(self, fn: BlockFn) -> list[Any]:
        """One delayed ``fn`` call per Dask block (band axis merged into one chunk)."""
        import dask

        d = self.data
        if d.ndim == 2:
            d = d[:, None, :]  # (L, 1, N): flat index = x
        d = d.rechunk({0: -1})
        blocks = d.to_delayed()
        ys = np.cumsum((0,) + d.chunks[1])
        xs = np.cumsum((0,) + d.chunks[2])
        run = dask.delayed(_run_block)
        return [run(blocks[0, i, j], int(ys[i]), int(xs[j]), d.shape[2], fn)
                for i in range(blocks.shape[1]) for j in range(blocks.shape[2])]

    def _whole(self, fn: BlockFn) -> Any:
        d = np.asarray(self.data)
        if d.ndim == 2:
            return fn(*_valid_columns(d, np.arange(d.shape[1])))
        return _run_block(d, 0, 0, d.shape[2], fn)

    def map_reduce(self, fn: BlockFn, combine: Callable[[Any, Any], Any]) -> Any:
        if not self.is_dask:
            return self._whole(fn)
        import dask

        parts = self._parts(fn)
        comb = dask.delayed(combine)
        while len(parts) > 1:
            parts = [comb(parts[k], parts[k + 1]) if k + 1 < len(parts) else parts[k]
                     for k in range(0, len(parts), 2)]
        (out,) = dask.compute(parts[0])
        return out

    def map_collect(self, fn: BlockFn) -> list[Any]:
        """``fn`` on every block's valid pixels; the list of results (block order)."""
        if not self.is_dask:
            return [self._whole(fn)]
        import dask

        return list(dask.compute(*self._parts(fn)))

    def points(self, flat: Sequence[int]) -> np.ndarray:
        """Spectra ``(L, k)`` of a few pixels by flat index; with Dask only their chunks are read."""
        flat = np.asarray(flat, dtype=np.int64)
        if self.data.ndim == 2:
            cols = [self.data[:, int(f)] for f in flat]
        else:
            cols = [self.data[:, int(f) // self.width, int(f) % self.width] for f in flat]
        if self.is_dask:
            import dask.array as da

            return np.asarray(da.stack(cols, axis=1).compute(), dtype=np.float64)
        return np.asarray(np.stack(cols, axis=1), dtype=np.float64)

    def fetch(self, flat: Sequence[int]) -> np.ndarray:
        """Full spectra ``(L, k)`` of these valid pixels (flat indices), block by block for Dask."""
        flat = np.asarray(flat, dtype=np.int64)
        got_idx, got = self.map_reduce(_Pick(flat), _Pick.combine)
        if got_idx.size != np.unique(flat).size:
            raise ValueError("some requested pixels are invalid (NaN or nodata)")
        return got[:, np.searchsorted(got_idx, flat)]


class _Pick:
    """Block function: the valid pixels of a block whose flat index is in ``wanted`` (sorted)."""

    def __init__(self, wanted: np.ndarray) -> None:
        self.wanted = np.unique(wanted)

    def __call__(self, Yb: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = np.isin(idx, self.wanted)
        return idx[keep], np.asarray(Yb[:, keep], dtype=np.float64)

    @staticmethod
    def combine(a: tuple[np.ndarray, np.ndarray],
                b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        idx = np.concatenate([a[0], b[0]])
        order = np.argsort(idx, kind="stable")
        return idx[order], np.concatenate([a[1], b[1]], axis=1)[:, order]


@dataclass
class _Stats:
    """Sufficient statistics of the valid pixels (float64)."""

    count: int
    total: np.ndarray  #: (L,) sum of spectra
    corr: np.ndarray  #: (L, L) sum of y y^T

    @staticmethod
    def of(Yb: np.ndarray, idx: np.ndarray) -> _Stats:
        L = Yb.shape[0]
        total, corr = np.zeros(L), np.zeros((L, L))
        for s in range(0, Yb.shape[1], _BATCH):
            Y64 = np.asarray(Yb[:, s:s + _BATCH], dtype=np.float64)
            total += Y64.sum(axis=1)
            corr += Y64 @ Y64.T
        return _Stats(int(Yb.shape[1]), total, corr)

    @staticmethod
    def add(a: _Stats, b: _Stats) -> _Stats:
        return _Stats(a.count + b.count, a.total + b.total, a.corr + b.corr)


def _stats(src: _Source) -> _Stats:
    st = src.map_reduce(_Stats.of, _Stats.add)
    if st.count == 0:
        raise ValueError("the cube has no valid pixel (every pixel is NaN or nodata in some band)")
    return st


def _top_eigvecs(M: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``d`` leading eigenpairs of a symmetric matrix, largest first, with a fixed sign convention
    (largest-magnitude entry of each vector positive) so that tiny perturbations cannot flip them."""
    w, V = np.linalg.eigh((M + M.T) / 2)
    order = np.argsort(w)[::-1][:d]
    w, V = w[order], V[:, order]
    k = np.argmax(np.abs(V), axis=0)
    V = V * np.sign(V[k, np.arange(V.shape[1])])
    return w, V


# -- VCA ----------------------------------------------------------------------------------------------

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


# -- HySime -------------------------------------------------------------------------------------------

def _hysime_from_corr(corr_sum: np.ndarray, count: int) -> tuple[int, np.ndarray, dict[str, Any]]:
    """HySime on the uncentred correlation ``sum_j y_j y_j^T`` of ``count`` pixels."""
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


# -- the cube-level entry point -----------------------------------------------------------------------

def _valid_mask(data: Any) -> np.ndarray:
    """(y, x) bool mask of valid pixels, computed block by block for Dask."""
    if hasattr(data, "dask"):
        import dask.array as da

        return np.asarray(da.isfinite(data).all(axis=0).compute())
    return np.isfinite(np.asarray(data)).all(axis=0)


def _sample_positions(data: Any, k: int, seed: int | np.random.Generator | None) -> np.ndarray:
    """``k`` flat indices of valid pixels drawn without replacement (sorted), seeded."""
    valid = np.flatnonzero(_valid_mask(data).ravel())
    if valid.size == 0:
        raise ValueError("the cube has no valid pixel (every pixel is NaN or nodata in some band)")
    if k >= valid.size:
        return valid
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(valid, size=k, replace=False))


def extract_endmembers(
    cube: xr.DataArray,
    n: int,
    *,
    method: str = "vca",
    seed: int | None = None,
    sample: int | None = None,
    snr: float | None = None,
) -> xr.DataArray:
    """Extract ``n`` endmembers from a cube with VCA.

    Parameters
    ----------
    cube : DataArray (band, y, x), any dim order, NumPy- or Dask-backed
        Pixels with NaN or the nodata value in any band are never chosen and do not enter the
        statistics. A Dask cube is never loaded whole: see the module notes for the passes made.
    n : int
        Number of endmembers, ``2 <= n <= bands`` (see :func:`estimate_n_endmembers`).
    method : {"vca"}
    seed : int, optional
        Seeds VCA's random directions and, with ``sample``, the pixel draw. Same seed: same result on
        a NumPy and a Dask cube.
    sample : int, optional
        Run on this many valid pixels drawn at random (seeded) instead of all of them (one pass for
        the validity mask, one to gather the sample; then everything runs in memory). Pure pixels left
        out of the sample cannot be found. ``None`` (default): all valid pixels (two passes, or
        ``n + 1`` on very large scenes: see the module notes).
    snr : float, optional
        Known SNR in dB (else estimated).

    Returns
    -------
    DataArray (band, endmember), float64
        The endmember spectra in the cube's units, projected on the signal subspace (VCA's denoised
        pixels). Coordinates: the cube's ``band`` coordinates (e.g. ``wavelength``), names
        ``vca0, vca1, ...`` in the order found, and per endmember where it came from: ``pixel_row``,
        ``pixel_col`` (integer positions) and ``pixel_y``, ``pixel_x`` (the cube's ``y``/``x``
        coordinates there, e.g. map coordinates). ``attrs`` record the method, seed, SNR and
        projection.

    Raises
    ------
    ValueError
        Unknown method, ``n < 2``, ``n`` above the band count, a cube with no valid pixel or fewer
        valid pixels than ``n``.
    """
    if method != "vca":
        raise ValueError(f"unknown method {method!r}: the only extraction method is 'vca'")
    data, facts = prepare_cube(cube, np.float32)
    p = _check_n(n, facts.n_bands)
    H, W = facts.shape_yx
    if sample is not None:
        sample = int(sample)
        if sample < p:
            raise ValueError(f"sample={sample} pixels is fewer than n={p} endmembers")
        pos = _sample_positions(data, sample, seed)
        Ys = _Source(data).fetch(pos)
        E, info = _vca_source(_Source(Ys), p, seed, snr)
        flat = pos[info.indices]
    else:
        E, info = _vca_source(_Source(data), p, seed, snr)
        flat = info.indices
    rows, cols = flat // W, flat % W
    names = np.array([f"vca{i}" for i in range(p)], dtype=object)
    coords: dict[str, Any] = {ENDMEMBER: names,
                              "pixel_row": (ENDMEMBER, rows.astype(np.int64)),
                              "pixel_col": (ENDMEMBER, cols.astype(np.int64))}
    for dim, pos_ in ((Y, rows), (X, cols)):
        if dim in cube.coords:
            coords[f"pixel_{dim}"] = (ENDMEMBER, np.asarray(cube.coords[dim].values)[pos_])
    for k, c in cube.coords.items():
        if c.dims == (BAND,):
            coords[k] = c.variable
    attrs = {"method": "vca", "seed": "none" if seed is None else int(seed), "snr_db": info.snr_db,
             "snr_estimated": int(info.snr_estimated), "projection": info.projection,
             "n_pixels_searched": info.n_pixels, "sample": "none" if sample is None else sample}
    return xr.DataArray(E, dims=(BAND, ENDMEMBER), coords=coords, name="endmembers", attrs=attrs)


def is_extraction_spec(spec: str) -> bool:
    """Whether an ``--endmembers`` value asks for extraction (``"vca"``, ``"vca:N"``, ``"vca:auto"``)
    rather than naming a file."""
    return isinstance(spec, str) and (spec.lower() == "vca" or spec.lower().startswith("vca:"))


def endmembers_from_spec(
    cube: xr.DataArray,
    spec: str,
    *,
    seed: int | None = None,
    sample: int | None = None,
) -> xr.DataArray:
    """Endmembers for a blind pipeline from a short spec, as the command line takes them.

    Parameters
    ----------
    cube : DataArray (band, y, x)
    spec : str
        ``"vca:N"`` (VCA with ``N`` endmembers), or ``"vca"`` / ``"vca:auto"`` (``N`` estimated by
        HySime first; on real scenes HySime often gives more than the number of materials).
    seed, sample
        Passed to :func:`extract_endmembers`.

    Returns
    -------
    DataArray (band, endmember), as :func:`extract_endmembers`; ``attrs["spec"]`` records ``spec``.

    Raises
    ------
    ValueError
        A spec that is not of these forms (the message shows the accepted forms).
    """
    if not is_extraction_spec(spec):
        raise ValueError(f"endmember spec {spec!r} not understood: use 'vca:N' (e.g. 'vca:4') or "
                         "'vca:auto' (N from HySime)")
    arg = spec.split(":", 1)[1].strip() if ":" in spec else "auto"
    if arg.lower() == "auto":
        n = estimate_n_endmembers(cube)
    else:
        try:
            n = int(arg)
        except ValueError:
            raise ValueError(f"endmember spec {spec!r}: {arg!r} is not an integer; use 'vca:N' or "
                             "'vca:auto'") from None
    E = extract_endmembers(cube, n, seed=seed, sample=sample)
    E.attrs["spec"] = spec
    return E
