"""Small task graphs on a distributed cluster for cubes that are already in memory.

``xr.DataArray(numpy_cube).chunk(...)`` (or ``dask.array.from_array``) embeds every block of the
array in the task graph, so that the first computation on a ``distributed`` cluster ships the whole
cube inside the graph: distributed warns "Sending large graph of size 49.5 MiB" and the scheduler
holds a copy. :func:`scatter_embedded` sends such blocks to the workers once
(``Client.scatter``) and rebuilds the array from the scattered blocks (same chunks, same values),
so that the graph holds references only. Without an active ``distributed.Client``, or for an array
read lazily from a file, it returns the array unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: embedded bytes above which the blocks are scattered (distributed warns from 10 MB)
SCATTER_BYTES = 1 << 20


def _active_client() -> Any:
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover  (distributed is a dependency)
        return None
    try:
        return default_client()
    except ValueError:  # no client
        return None


def _embedded_blocks(data: Any) -> dict[tuple[int, ...], np.ndarray] | None:
    """The blocks of a dask array made straight from an in-memory numpy array, by chunk index;
    ``None`` for any other graph."""
    graph = getattr(data, "dask", None)
    layers = getattr(graph, "layers", None)
    if layers is None or len(layers) != 1:
        return None
    (layer,) = layers.values()
    blocks: dict[tuple[int, ...], np.ndarray] = {}
    for key, value in dict(layer).items():
        value = getattr(value, "value", value)  # a task-spec DataNode wraps its data
        if not (isinstance(key, tuple) and key[0] == data.name and isinstance(value, np.ndarray)):
            return None
        blocks[tuple(key[1:])] = value
    n = int(np.prod(data.numblocks))
    return blocks if len(blocks) == n else None


def scatter_embedded(data: Any) -> Any:
    """``data`` with its embedded numpy blocks scattered to the active cluster (see module doc)."""
    client = _active_client()
    if client is None:
        return data
    blocks = _embedded_blocks(data)
    if blocks is None or sum(b.nbytes for b in blocks.values()) < SCATTER_BYTES:
        return data
    import dask.array as da

    index = list(np.ndindex(*data.numblocks))
    futures = dict(zip(index, client.scatter([blocks[i] for i in index]), strict=True))

    def nest(prefix: tuple[int, ...]) -> Any:
        if len(prefix) == data.ndim:
            return da.from_delayed(futures[prefix], shape=blocks[prefix].shape, dtype=data.dtype,
                                   meta=np.empty((0,) * data.ndim, data.dtype))
        return [nest((*prefix, i)) for i in range(data.numblocks[len(prefix)])]

    return da.block(nest(()))
