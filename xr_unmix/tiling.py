"""Overlapping spatial tiles through an estimator, stitched back: the one place that talks to Dask.

A *kernel* is a plain function ``kernel(block) -> out`` from a finite ``(bands, h, w)`` array to an
``(n_out, h, w)`` array. :func:`map_tiles` wraps it so that invalid pixels (NaN in any band) are filled
before the kernel sees them and come out NaN, all-invalid tiles skip the kernel, and with a Dask input
every output chunk is computed from its input chunk plus a ``halo`` of neighbouring pixels, then cropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Kernel = Callable[[np.ndarray], np.ndarray]


def masked_kernel(block: np.ndarray, kernel: Kernel, n_out: int, dtype: Any) -> np.ndarray:
    """Apply ``kernel`` to ``block`` ``(bands, h, w)`` with NaN-in, NaN-out per pixel.

    Invalid pixels are filled with 0 before the kernel runs (so one bad pixel cannot poison a solve
    that mixes pixels) and set to NaN afterwards. A block with no valid pixel returns all-NaN without
    calling the kernel.
    """
    valid = np.isfinite(block).all(axis=0)
    h, w = block.shape[1:]
    if not valid.any():
        return np.full((n_out, h, w), np.nan, dtype=dtype)
    filled = block if valid.all() else np.where(valid[None], block, 0).astype(block.dtype)
    out = np.asarray(kernel(filled), dtype=dtype)
    if out.shape != (n_out, h, w):
        raise RuntimeError(f"kernel returned shape {out.shape}, expected {(n_out, h, w)}")
    if not valid.all():
        out = np.where(valid[None], out, np.nan).astype(dtype, copy=False)
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
                block_info: dict[Any, Any] | None = None) -> np.ndarray:
    out = masked_kernel(block, kernel, n_out, out_dtype)
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


def map_tiles(data: Any, kernel: Kernel, n_out: int, *, halo: int = 0,
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
    halo : int
        Overlap in pixels between neighbouring tiles (>= the kernel's spatial receptive field).
    dtype
        Output dtype.

    Returns
    -------
    Same kind as ``data``, shape (n_out, y, x); a dask result is lazy and chunked like ``data`` in y/x
    (chunks smaller than ``halo`` are merged into a neighbour first).
    """
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}")
    if not hasattr(data, "dask"):
        return masked_kernel(np.asarray(data), kernel, n_out, dtype)
    import dask.array as da

    if len(data.chunks[0]) != 1:
        data = data.rechunk({0: -1})
    if halo:
        ych, xch = _merge_small(data.chunks[1], halo), _merge_small(data.chunks[2], halo)
        if (ych, xch) != data.chunks[1:]:
            data = data.rechunk((data.chunks[0], ych, xch))
    out_chunks = ((n_out,), *data.chunks[1:])
    if halo == 0:
        return da.map_blocks(
            _tile_block, data, kernel=kernel, halo=0, n_out=n_out, out_dtype=dtype, dtype=dtype,
            chunks=out_chunks, meta=np.empty((0, 0, 0), dtype=dtype),
        )
    return da.map_overlap(
        _tile_block, data, depth={0: 0, 1: halo, 2: halo}, boundary="none", trim=False,
        allow_rechunk=False, chunks=out_chunks, dtype=dtype, meta=np.empty((0, 0, 0), dtype=dtype),
        kernel=kernel, halo=halo, n_out=n_out, out_dtype=dtype,
    )
