"""Overlapping spatial tiles through an estimator, stitched back: the one place that talks to Dask.

A *kernel* is a plain function ``kernel(block) -> out`` from a finite ``(bands, h, w)`` array to an
``(n_out, h, w)`` array. :func:`map_tiles` wraps it so that invalid pixels (NaN in any band) are filled
before the kernel sees them and come out NaN, all-invalid tiles skip the kernel, and with a Dask input
every output chunk is computed from its input chunk plus a ``halo`` of neighbouring pixels.

Two ways of stitching the overlapping tiles back:

- **crop** (default): each tile keeps only its own core. Exact wherever the halo covers the kernel's
  spatial receptive field (and trivially for pixel-wise kernels).
- **blend** (``TileSpec(blend=True)``, as :class:`xr_unmix.DEQUnmix` declares): every tile predicts its whole extended region; the predictions of the up to
  nine tiles covering a pixel are averaged with a taper window that is 1 in a tile's interior and falls
  smoothly (``sin^2``) to 0 over the ``2 * halo`` pixels shared with its neighbour, reaching 0 ``halo // 2``
  pixels before its cut edge (the weights of two neighbours sum to one there; see :func:`taper`). For a kernel with an unbounded receptive field (a deep
  equilibrium model) this removes the discontinuity at tile borders and puts little weight on each
  tile's least reliable (outermost) pixels. The average is taken in float64, so a pixel-wise kernel still
  stitches back bit for bit.

Memory: with a halo, an input chunk is needed by its own tile and by its neighbours' halos; through
``map_overlap`` it would wait in memory, whole, for all of them (about two rows of chunks on a wide scene).
:func:`xr_unmix._halo.halo_blocks` cuts the halos from a second computation of the input instead (grids of
at least 3 x 3 chunks), so what waits between tiles is the halo slivers, not chunks; the values each kernel
sees are the same.

The contract between an estimator and this module is a :class:`TileSpec`: its halo, whether tiles are
blended, whether it is pixel-wise, and whether it finds invalid pixels itself. Every model declares one
(:attr:`xr_unmix.models.base.UnmixModel.tile_spec`); :func:`map_tiles` takes it, nothing is probed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ._halo import halo_blocks
from .runtime import blas_threads, task_blas_threads  # noqa: F401  (blas_threads: kept importable here)

Kernel = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TileSpec:
    """How an estimator is tiled: the model <-> tiling contract.

    Parameters
    ----------
    halo : int
        Overlap of neighbouring tiles in pixels (>= the kernel's spatial receptive field; 0 for a
        pixel-wise kernel).
    blend : bool
        Stitch overlapping tiles by weighted blending instead of cropping (see the module notes; only
        matters with a dask input and ``halo > 0``).
    pixelwise : bool
        Each output pixel depends on that input pixel only (then a tile may be cut into pixel batches).
    handles_nan : bool
        The kernel takes blocks with invalid pixels (NaN/inf in any band) and returns NaN for them
        itself: no mask pass and no filled copy of the block.
    """

    halo: int = 0
    blend: bool = False
    pixelwise: bool = True
    handles_nan: bool = False

    def __post_init__(self) -> None:
        if int(self.halo) != self.halo or self.halo < 0:
            raise ValueError(f"halo must be an integer >= 0, got {self.halo}")
        if self.pixelwise and self.halo:
            raise ValueError(f"a pixel-wise kernel needs no halo, got halo={self.halo}")

    @classmethod
    def spatial(cls, halo: int, *, blend: bool = False) -> TileSpec:
        """A kernel that sees a neighbourhood: tiles overlap by ``halo`` px (blended or cropped)."""
        return cls(halo=int(halo), blend=bool(blend), pixelwise=False)


def invalid_pixels(block: np.ndarray) -> np.ndarray | None:
    """Boolean ``(h, w)`` map of the pixels with a NaN or inf in any band, or ``None`` if there is none.

    One pass over the block: a per-pixel sum over the bands (a BLAS product with a vector of ones) is
    non-finite wherever a band is (NaN and inf propagate); only the pixels it flags are checked band by
    band, so a finite pixel whose sum overflows is not taken for an invalid one. About 3x cheaper than
    ``~np.isfinite(block).all(axis=0)``, which materialises a boolean copy of the whole block.
    """
    b = block.shape[0]
    flat = block.reshape(b, -1)
    if flat.dtype.kind != "f":
        return None
    if b == 0 or flat.shape[1] == 0:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        if flat.dtype.itemsize >= 4:
            with task_blas_threads():
                s = np.ones(b, dtype=flat.dtype) @ flat
        else:
            s = flat.sum(axis=0, dtype=np.float32)
    cand = ~np.isfinite(s)
    if not cand.any():
        return None
    idx = np.flatnonzero(cand)
    bad = ~np.isfinite(flat[:, idx]).all(axis=0)
    if not bad.all():
        cand[idx[~bad]] = False
        if not cand.any():
            return None
    return cand.reshape(block.shape[1:])


def masked_kernel(block: np.ndarray, kernel: Kernel, n_out: int, dtype: Any, *,
                  handles_nan: bool = False) -> np.ndarray:
    """Apply ``kernel`` to ``block`` ``(bands, h, w)`` with NaN-in, NaN-out per pixel.

    Invalid pixels (NaN or inf in any band) are filled with 0 before the kernel runs (so one bad pixel
    cannot poison a solve that mixes pixels) and set to NaN afterwards. A block with no valid pixel
    returns all-NaN without calling the kernel.

    With ``handles_nan`` (:attr:`TileSpec.handles_nan`) the kernel takes the block as it is, invalid
    pixels included, and must return NaN for them itself (a pixel-wise solver can find them in its own
    data term at no extra cost): no mask pass and no filled copy of the block here.
    """
    h, w = block.shape[1:]
    if handles_nan:
        out = np.asarray(kernel(block), dtype=dtype)
        if out.shape != (n_out, h, w):
            raise RuntimeError(f"kernel returned shape {out.shape}, expected {(n_out, h, w)}")
        return out
    invalid = invalid_pixels(block)
    if invalid is None:
        filled = block
    else:
        if invalid.all():
            return np.full((n_out, h, w), np.nan, dtype=dtype)
        filled = block.copy()  # the input may be shared (a Dask chunk, the caller's array): never in place
        filled.reshape(block.shape[0], -1)[:, invalid.ravel()] = 0
    out = np.asarray(kernel(filled), dtype=dtype)
    if out.shape != (n_out, h, w):
        raise RuntimeError(f"kernel returned shape {out.shape}, expected {(n_out, h, w)}")
    if invalid is not None:  # a new array: the kernel's output may be a buffer it keeps (n_out bands: cheap)
        out = np.where(invalid[None], np.asarray(np.nan, dtype=out.dtype), out)
    return out


def _crop(a: np.ndarray, halo: int, block_info: dict[Any, Any] | None) -> np.ndarray:
    """Remove the halo that ``map_overlap(boundary="none")`` added (none on the image edges)."""
    if halo == 0 or block_info is None:
        return a
    (_, iy, ix) = block_info[0]["chunk-location"]
    (_, ny, nx) = block_info[0]["num-chunks"]
    t = 0 if iy == 0 else halo
    b = 0 if iy == ny - 1 else halo
    left = 0 if ix == 0 else halo
    r = 0 if ix == nx - 1 else halo
    return a[:, t: a.shape[1] - b, left: a.shape[2] - r]


def _tile_block(block: np.ndarray, *, kernel: Kernel, halo: int, n_out: int, out_dtype: Any,
                handles_nan: bool, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    out = masked_kernel(block, kernel, n_out, out_dtype, handles_nan=handles_nan)
    return _crop(out, halo, block_info)


def _merge_small(chunks: tuple[int, ...], minimum: int) -> tuple[int, ...]:
    """Merge chunks smaller than ``minimum`` into a neighbour (dask needs halo <= every chunk)."""
    out = list(chunks)
    i = 0
    while len(out) > 1 and i < len(out):
        if out[i] < minimum:
            j = i - 1 if i == len(out) - 1 else i + 1
            out[min(i, j)] = out[i] + out[j]
            del out[max(i, j)]
            i = 0
        else:
            i += 1
    return tuple(out)


def taper(n: int, halo: int, lo: bool, hi: bool) -> np.ndarray:
    """1-D blending weights of a tile's extended extent ``n`` (core plus halos), float64.

    ``lo``/``hi``: the tile has a neighbour (hence a halo) before/after. Of the ``2 * halo`` pixels a tile
    shares with that neighbour, the outer ``margin = halo // 2`` get weight 0 (a tile's least reliable
    pixels, next to its cut edge), the next ``L = 2 * (halo - margin)`` rise as
    ``sin^2(pi (j + 1/2) / (2 L))`` and the rest is 1. The neighbour's mirrored window completes it to
    exactly 1 (``sin^2 + cos^2``), so the blend is a convex combination that varies smoothly across the
    tile border.
    """
    w = np.ones(n, dtype=np.float64)
    if halo <= 0:
        return w
    margin = halo // 2
    span = 2 * (halo - margin)
    ramp = np.concatenate([np.zeros(margin),
                           np.sin(np.pi * (np.arange(span) + 0.5) / (2 * span)) ** 2,
                           np.ones(margin)])  # length 2 * halo
    m = min(2 * halo, n)
    if lo:
        w[:m] *= ramp[:m]
    if hi:
        w[n - m:] *= ramp[::-1][2 * halo - m:]
    return w


def _weighted_block(block: np.ndarray, *, kernel: Kernel, halo: int, n_out: int, handles_nan: bool,
                    block_info: dict[Any, Any] | None = None) -> np.ndarray:
    """Stage 1 of blending: ``[prediction * window, window]`` over the tile's extended region."""
    out = masked_kernel(block, kernel, n_out, np.float64, handles_nan=handles_nan)
    (_, iy, ix) = block_info[0]["chunk-location"]  # type: ignore[index]
    (_, ny, nx) = block_info[0]["num-chunks"]  # type: ignore[index]
    wy = taper(out.shape[1], halo, iy > 0, iy < ny - 1)
    wx = taper(out.shape[2], halo, ix > 0, ix < nx - 1)
    w = wy[:, None] * wx[None, :]
    return np.concatenate([out * w, w[None]], axis=0)


def _assemble(parts: list[np.ndarray], where: list[tuple[int, ...]], shape: tuple[int, int],
              n_out: int, dtype: Any) -> np.ndarray:
    """Stage 2 of blending: sum the neighbours' weighted predictions over one core block."""
    num = np.zeros((n_out, *shape), dtype=np.float64)
    den = np.zeros(shape, dtype=np.float64)
    for part, (ey0, ey1, ex0, ex1, cy0, cy1, cx0, cx1) in zip(parts, where, strict=True):
        num[:, cy0:cy1, cx0:cx1] += part[:n_out, ey0:ey1, ex0:ex1]
        den[cy0:cy1, cx0:cx1] += part[n_out, ey0:ey1, ex0:ex1]
    return (num / den).astype(dtype)


def _starts(chunks: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(chunks)]).astype(int)


def _blend(data: Any, kernel: Kernel, n_out: int, halo: int, dtype: Any, handles_nan: bool) -> Any:
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    ych, xch = data.chunks[1], data.chunks[2]
    ny, nx = len(ych), len(xch)

    def ext_sizes(ch: tuple[int, ...]) -> tuple[int, ...]:
        n = len(ch)
        return tuple(c + (halo if i > 0 else 0) + (halo if i < n - 1 else 0) for i, c in enumerate(ch))

    weighted = partial(_weighted_block, kernel=kernel, halo=halo, n_out=n_out, handles_nan=handles_nan)
    ext = halo_blocks(data, halo, weighted, ((n_out + 1,), ext_sizes(ych), ext_sizes(xch)), np.float64)
    ys, xs = _starts(ych), _starts(xch)
    # extent of every extended tile, in image coordinates
    ey = [(ys[i] - (halo if i > 0 else 0), ys[i + 1] + (halo if i < ny - 1 else 0)) for i in range(ny)]
    ex = [(xs[j] - (halo if j > 0 else 0), xs[j + 1] + (halo if j < nx - 1 else 0)) for j in range(nx)]
    name = "blend-tiles-" + tokenize(ext.name, halo, n_out, np.dtype(dtype).str)
    dsk: dict[Any, Any] = {}
    for i in range(ny):
        for j in range(nx):
            keys, where = [], []
            for k in range(max(0, i - 1), min(ny, i + 2)):
                y0, y1 = max(ys[i], ey[k][0]), min(ys[i + 1], ey[k][1])
                if y0 >= y1:
                    continue
                for m in range(max(0, j - 1), min(nx, j + 2)):
                    x0, x1 = max(xs[j], ex[m][0]), min(xs[j + 1], ex[m][1])
                    if x0 >= x1:
                        continue
                    keys.append((ext.name, 0, k, m))
                    where.append((int(y0 - ey[k][0]), int(y1 - ey[k][0]), int(x0 - ex[m][0]),
                                  int(x1 - ex[m][0]), int(y0 - ys[i]), int(y1 - ys[i]),
                                  int(x0 - xs[j]), int(x1 - xs[j])))
            dsk[(name, 0, i, j)] = (_assemble, keys, where, (int(ych[i]), int(xch[j])), n_out,
                                    np.dtype(dtype))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[ext])
    return da.Array(graph, name, chunks=((n_out,), ych, xch), dtype=dtype,
                    meta=np.empty((0, 0, 0), dtype=dtype))


def map_tiles(data: Any, kernel: Kernel, n_out: int, spec: TileSpec | None = None, *,
              dtype: Any = np.float32) -> Any:
    """Run ``kernel`` over ``data`` ``(bands, y, x)``, tile by tile when ``data`` is a Dask array.

    Parameters
    ----------
    data : numpy or dask array, shape (bands, y, x)
        Invalid pixels as NaN. A dask array must have the band axis in one chunk.
    kernel : callable
        ``(bands, h, w)`` finite array -> ``(n_out, h, w)`` array.
    n_out : int
        Number of output channels (endmembers).
    spec : TileSpec, optional
        Halo, blending and NaN handling of the kernel; default ``TileSpec()`` (pixel-wise: no halo).
    dtype
        Output dtype.

    Returns
    -------
    Same kind as ``data``, shape (n_out, y, x); a dask result is lazy and chunked like ``data`` in y/x
    (chunks smaller than ``spec.halo`` are merged into a neighbour first).
    """
    spec = TileSpec() if spec is None else spec
    if not isinstance(spec, TileSpec):
        raise TypeError(f"spec must be a TileSpec, got {type(spec).__name__}")
    halo, nan = spec.halo, spec.handles_nan
    if not hasattr(data, "dask"):
        return masked_kernel(np.asarray(data), kernel, n_out, dtype, handles_nan=nan)
    import dask.array as da

    if len(data.chunks[0]) != 1:
        data = data.rechunk({0: -1})
    if halo:
        ych, xch = _merge_small(data.chunks[1], halo), _merge_small(data.chunks[2], halo)
        if (ych, xch) != data.chunks[1:]:
            data = data.rechunk((data.chunks[0], ych, xch))
    out_chunks = ((n_out,), *data.chunks[1:])
    if halo and spec.blend:
        return _blend(data, kernel, n_out, halo, dtype, nan)
    tile = partial(_tile_block, kernel=kernel, halo=halo, n_out=n_out, out_dtype=dtype, handles_nan=nan)
    if halo == 0:
        return da.map_blocks(tile, data, dtype=dtype, chunks=out_chunks,
                             meta=np.empty((0, 0, 0), dtype=dtype))
    return halo_blocks(data, halo, tile, out_chunks, dtype)
