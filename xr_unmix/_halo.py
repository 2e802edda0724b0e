"""Halo tiles whose peak memory does not grow a chunk row per tile row: halos cut from a recomputed input.

:func:`halo_blocks` runs ``fn`` on every chunk of a ``(bands, y, x)`` Dask array extended by ``halo``
pixels from its neighbours (none past the image edges), like ``dask.array.map_overlap(fn, x,
depth={1: halo, 2: halo}, boundary="none", trim=False)``, with the same values reaching ``fn``.

Why not ``map_overlap`` itself on a wide grid: there every input chunk feeds its own tile *and* its
neighbours' halos, so a chunk computed for a neighbour's halo stays in memory, whole, until its own tile
runs. Whatever order the tiles run in, the chunks on the border of the finished region are held: about
two rows of input chunks (``2 x width x chunk x bands x 4 B``), growing with the scene's side. Here the
halos come from a second, independent computation of the input (a copy of its graph): each copied chunk
is cut into copies of the slivers its neighbours need (a marker task needs all of one chunk's slivers, so
whichever neighbour comes first, all are cut together and the copied chunk is released), each sliver is
freed once its tile has run, and the original chunk feeds only its own tile. What stays in memory between
tiles is slivers (``halo / chunk`` of a chunk each), not chunks. The price is a second read or computation of the input,
so :func:`use_recompute` takes this path only on grids where holding chunk rows costs more than a
few chunks (at least 3 x 3 chunks); a small grid keeps ``map_overlap``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: the smallest number of chunks along both y and x for which the halos are recomputed
RECOMPUTE_MIN_CHUNKS = 3


def _has_task_spec() -> bool:
    """Whether this Dask has the task-spec graph (``dask._task_spec``, Dask >= 2024.12) the copy needs."""
    try:
        from dask._task_spec import convert_legacy_graph  # noqa: F401
    except ImportError:  # an older Dask (pyproject allows >= 2024.6): keep map_overlap
        return False
    return True


def use_recompute(numblocks: tuple[int, ...]) -> bool:
    """Whether a grid of ``numblocks = (bands, ny, nx)`` chunks gets recomputed halos.

    Only grids of at least :data:`RECOMPUTE_MIN_CHUNKS` chunks each way, and only with a Dask whose
    graphs can be copied (:func:`_has_task_spec`); otherwise ``map_overlap``'s memory, same values.
    """
    return min(numblocks[1:]) >= RECOMPUTE_MIN_CHUNKS and _has_task_spec()


def _side(d: int, halo: int) -> slice:
    """Rows (or columns) of a neighbour chunk at offset ``d`` (-1, 0, +1) that a tile's halo takes."""
    return slice(-halo, None) if d < 0 else (slice(None) if d == 0 else slice(0, halo))


def _cut(chunk: np.ndarray, dy: int, dx: int, halo: int) -> np.ndarray:
    """A copy of the sliver of ``chunk`` that its (dy, dx) neighbour tile takes into its halo."""
    return np.array(chunk[:, _side(dy, halo), _side(dx, halo)], copy=True)


def _done(parts: list[np.ndarray]) -> None:
    """A marker that needs every sliver of one chunk: whichever tile comes first, all are cut together."""


def _tile(center: np.ndarray, parts: list[list[Any]], dys: list[int], dxs: list[int], fn: Callable,
          loc: list[int], nchunks: list[int], cut: list[None]) -> np.ndarray:
    """Assemble one extended block (the same array ``map_overlap`` would pass) and run ``fn`` on it."""
    rows = [[center if (dy, dx) == (0, 0) else parts[r][c] for c, dx in enumerate(dxs)]
            for r, dy in enumerate(dys)]
    block = center if len(dys) == len(dxs) == 1 else np.block(rows)
    return fn(block, block_info={0: {"chunk-location": (0, *loc), "num-chunks": (1, *nchunks)}})


def _copy_graph(data: Any) -> tuple[str, dict[Any, Any]]:
    """A second, independent copy of the graph of ``data`` (every key renamed): ``(name, graph)``.

    ``dask.graph_manipulation.clone`` is not used: in this Dask it renames a graph's keys but not the
    keys its tasks carry, which the optimiser's fusion then trips over.
    """
    from dask._task_spec import convert_legacy_graph

    graph = convert_legacy_graph(dict(data.__dask_graph__()))

    def rename(key: Any) -> Any:
        return (f"{key[0]}-halo-copy", *key[1:]) if isinstance(key, tuple) else f"{key}-halo-copy"

    subs = {k: rename(k) for k in graph}
    return rename(data.name), {subs[k]: t.substitute(subs, key=subs[k]) for k, t in graph.items()}


def halo_blocks(data: Any, halo: int, fn: Callable, chunks: tuple[tuple[int, ...], ...], dtype: Any,
                *, recompute: bool | None = None) -> Any:
    """``fn(extended_block, block_info=...)`` on every chunk of ``data`` extended by ``halo`` px.

    Parameters
    ----------
    data : dask array, shape (bands, y, x)
        One chunk along bands; every y/x chunk at least ``halo`` px.
    halo : int
        Overlap in pixels (> 0).
    fn : callable
        ``(bands, h + halos, w + halos)`` array, ``block_info`` (``chunk-location``, ``num-chunks``
        of input 0, as ``map_overlap`` gives) -> one output block.
    chunks : tuple
        The output's chunks (what ``fn`` returns, block by block).
    dtype
        The output's dtype.
    recompute : bool, optional
        Cut halos from a second computation of ``data`` (see the module notes); default
        :func:`use_recompute` of the grid.

    Returns
    -------
    dask array with ``chunks``; its blocks are bit for bit those of ``map_overlap``.
    """
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    meta = np.empty((0,) * len(chunks), dtype=dtype)
    if not (use_recompute(data.numblocks) if recompute is None else recompute):
        return da.map_overlap(fn, data, depth={0: 0, 1: halo, 2: halo}, boundary="none", trim=False,
                              allow_rechunk=False, chunks=chunks, dtype=dtype, meta=meta)
    ny, nx = data.numblocks[1:]
    src_name, src_layer = _copy_graph(data)
    tok = tokenize(data.name, halo, fn, chunks, np.dtype(dtype).str)
    name, pname, dname = f"halo-tiles-{tok}", f"halo-slivers-{tok}", f"halo-cut-{tok}"
    near = [(d, e) for d in (-1, 0, 1) for e in (-1, 0, 1) if (d, e) != (0, 0)]
    slivers: dict[Any, Any] = {}
    for k in range(ny):
        for m in range(nx):  # chunk (k, m) is the (dy, dx) neighbour of tile (k - dy, m - dx)
            parts = []
            for dy, dx in near:
                if 0 <= k - dy < ny and 0 <= m - dx < nx:
                    parts.append((pname, k, m, dy, dx))
                    slivers[parts[-1]] = (_cut, (src_name, 0, k, m), dy, dx, halo)
            slivers[(dname, k, m)] = (_done, parts)
    dsk: dict[Any, Any] = {}
    for i in range(ny):
        for j in range(nx):
            dys = [d for d in (-1, 0, 1) if 0 <= i + d < ny]
            dxs = [d for d in (-1, 0, 1) if 0 <= j + d < nx]
            parts = [[None if (dy, dx) == (0, 0) else (pname, i + dy, j + dx, dy, dx) for dx in dxs]
                     for dy in dys]
            done = [(dname, i + dy, j + dx) for dy in dys for dx in dxs if (dy, dx) != (0, 0)]
            dsk[(name, 0, i, j)] = (_tile, (data.name, 0, i, j), parts, dys, dxs, fn, [i, j], [ny, nx], done)
    layers = {**data.dask.layers, src_name: src_layer, pname: slivers, name: dsk}
    deps = {**data.dask.dependencies, src_name: set(), pname: {src_name}, name: {data.name, pname}}
    graph = HighLevelGraph(layers, deps)
    return da.Array(graph, name, chunks=chunks, dtype=dtype, meta=meta)
