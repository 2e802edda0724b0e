"""The COG writer's tiles on a ``distributed`` cluster: one raw file per block, no lock.

On local threads :func:`xr_unmix.io.to_cog` writes every block straight into its scratch GeoTIFF under
one process's lock. On a cluster that lock is a ``distributed.Lock``: two scheduler round trips per
block, while the worker's only thread waits (profiled at 2048² x 5, 64 blocks, 2 workers: 0.9-1.7 s of
lock calls per worker, against 0.04-0.09 s for the threads' lock, docs/batch.md). Here each task
writes its block to its own file in the scratch folder instead (no lock: no two tasks share a file),
and :func:`assemble` copies the blocks into the scratch GeoTIFF on the client, in one open, before the
overviews and the COG copy. The values written are the ones ``rioxarray`` would have written, so the COG
is the same file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import OutputError


def _part_name(y0: int, x0: int) -> str:
    return f"{y0}_{x0}.f32"


class TileParts:
    """A ``dask.array.store`` target: ``target[bands, rows, cols] = block`` writes one raw float32 file.

    Picklable (a folder path only): every worker writes into the shared scratch folder. A part is
    written to a temporary name and renamed, so it is either whole or absent (a task that is re-run
    after a worker died writes it again).
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __setitem__(self, key: tuple[slice, ...], block: np.ndarray) -> None:
        _, ys, xs = key
        path = os.path.join(self.folder, _part_name(int(ys.start or 0), int(xs.start or 0)))
        tmp = f"{path}.{os.getpid()}.tmp"
        np.ascontiguousarray(block, dtype=np.float32).tofile(tmp)
        os.replace(tmp, path)


def store_parts(arr: xr.DataArray, folder: Path) -> Any:
    """The pending ``dask.array.store`` of ``arr`` ``(layer, y, x)`` (dask-backed) into ``folder``.

    The data are encoded as ``rioxarray.to_raster`` encodes them (``encode_cf_variable``, float32).
    """
    import dask.array as da
    from xarray.conventions import encode_cf_variable

    data = encode_cf_variable(arr.variable).data.astype(np.float32)
    return da.store(data, TileParts(os.fspath(folder)), lock=False, compute=False)


def assemble(folder: Path, gtiff: Path, chunks: tuple[tuple[int, ...], ...]) -> None:
    """Write every part in ``folder`` into ``gtiff`` (open once, ``r+``), deleting each part after.

    ``chunks`` are the stored array's ``(layer, y, x)`` chunks: a part that is missing or of the wrong
    size raises :class:`~xr_unmix.errors.OutputError` (the COG would otherwise hold a blank tile).
    """
    import rasterio
    from rasterio.windows import Window

    n = int(sum(chunks[0]))
    ys = np.concatenate([[0], np.cumsum(chunks[1])[:-1]]).astype(int)
    xs = np.concatenate([[0], np.cumsum(chunks[2])[:-1]]).astype(int)
    with rasterio.open(gtiff, "r+") as ds:
        for y0, h in zip(ys, chunks[1], strict=True):
            for x0, w in zip(xs, chunks[2], strict=True):
                part = folder / _part_name(int(y0), int(x0))
                try:
                    block = np.fromfile(part, dtype=np.float32)
                except OSError as exc:
                    raise OutputError(f"{gtiff}: the tile at row {y0}, column {x0} was not written "
                                      f"({exc})") from exc
                if block.size != n * h * w:
                    raise OutputError(f"{gtiff}: the tile at row {y0}, column {x0} has {block.size} "
                                      f"values, expected {n * h * w}")
                ds.write(block.reshape(n, h, w), window=Window(int(x0), int(y0), int(w), int(h)))
                part.unlink()
