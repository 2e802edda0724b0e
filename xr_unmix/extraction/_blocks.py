"""The block engine of extraction: one code path for a NumPy and a Dask ``(bands, pixels)`` or
``(bands, y, x)`` array.

A :class:`_Source` maps a function over the valid pixels of each block (``map_reduce``,
``map_collect``) and fetches chosen pixels in full; :class:`_Stats` is the one-pass sum and uncentred
correlation (float64) both VCA and HySime start from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BlockFn = Callable[[np.ndarray, np.ndarray], Any]  # (Yb (L, nb) valid pixels, flat indices (nb,)) -> r

#: Pixels converted to float64 at a time inside a block (bounds the per-task temporaries).
_BATCH = 32768


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
