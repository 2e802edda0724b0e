"""Writers that compute a map top to bottom, a row of output blocks at a time: memory of a band, not a scene.

Dask's own order (:func:`dask.order.order`) runs a halo graph's interior tiles first and its edge rows
and columns last: the halo slivers cut for the edge tiles then wait in memory, and their number grows
with the scene (95 slivers, ~230 MB, on an 8 x 8 grid of 150-band 256² chunks, docs/benchmarks.md).
Here the writers' one computation keeps its graph, but the local scheduler is told which ready task to
run first: :class:`RowBands` is a Dask callback (local schedulers: threads, sync, processes) that sorts
the scheduler's ready tasks by **band** -- the output blocks' raster order, ``(block row // rows, block
column)`` -- and, among tasks of one band, keeps Dask's order.

The band of a task is that of the first output block that needs it (the minimum over its dependents,
up from the ``store-map`` tasks that write the blocks), moved earlier to the band of its inputs when
all of them belong to an earlier band: a halo sliver cut from an input chunk of the next row runs with
the chunk and frees it at once, instead of holding it until the next row. A task of a later band runs
only while no earlier one is ready -- at a band's tail, when a thread would otherwise idle -- so the
next band is in flight while the current one finishes, with no second compute call and no task run
twice. Once every block of a block row is written, ``malloc_trim`` (glibc) hands the freed heap back:
the slivers and tile outputs of a row are small enough to stay in malloc's arenas, where they raised
RSS by ~60 MB at 2048² (measured, docs/benchmarks.md).

What a band keeps in memory is the halo state of about two rows of blocks (slivers and neighbouring
tiles' outputs), so it grows with the scene's **width**, not its area; FCLS and the pixel-wise
networks hold next to nothing between blocks. Values and files are those of the whole-graph write;
the progress bar counts the one computation; an error is that of the one computation (the writers'
scratch files and atomic renames as before). On a ``distributed`` client the callback does not apply
(the cluster's scheduler orders the tasks): memory there is that of Dask's order.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import graphlib
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from dask.callbacks import Callback

#: block rows per band (within a band, blocks left to right). 2 rows measured no better (DEQ 2048² to
#: Zarr: 578 against 610 MB for 1 row, one run each, before the column order was added)
ROWS = 1

#: the band of a task that no block write needs (it runs last)
LAST = (math.inf, math.inf)

#: the prefix of the tasks that write one block (``dask.array.store``): their key's last two indices
#: are the block's y and x positions
STORE_PREFIX = "store-map-"


def output_block(key: Hashable) -> tuple[int, int] | None:
    """The (y, x) block indices of a ``store-map`` task's key ``(name, ..., y, x)``; else ``None``."""
    if (isinstance(key, tuple) and len(key) >= 3 and isinstance(key[0], str)
            and key[0].startswith(STORE_PREFIX) and isinstance(key[-2], int)
            and isinstance(key[-1], int)):
        return key[-2], key[-1]
    return None


def task_bands(dependencies: Mapping[Hashable, set[Hashable]],
               rows: int = ROWS) -> dict[Hashable, tuple[float, float]]:
    """The band of every task of a graph (see the module notes); ``{}`` when nothing writes blocks.

    Parameters
    ----------
    dependencies : mapping
        ``key -> set of keys it needs`` for every key of the graph (the local scheduler's
        ``state["dependencies"]``).
    rows : int
        Block rows per band (>= 1).

    Returns
    -------
    dict
        ``key -> (block row // rows, block column)``, compared as tuples (:data:`LAST` for a task no
        block write needs; the final task that gathers the writes gets the last block's band).
    """
    rows = max(1, int(rows))
    seeds = {k: (yx[0] // rows, yx[1]) for k in dependencies if (yx := output_block(k)) is not None}
    if not seeds:
        return {}
    topo = list(graphlib.TopologicalSorter(dependencies).static_order())  # inputs first
    first: dict[Hashable, tuple[float, float]] = {k: seeds.get(k, LAST) for k in topo}
    for k in reversed(topo):  # dependents before their inputs: each input takes the earliest band
        b = first[k]
        for d in dependencies.get(k, ()):
            if b < first[d]:
                first[d] = b
    band: dict[Hashable, tuple[float, float]] = {}
    for k in topo:  # a task whose inputs are all of earlier bands runs with them (not a block write)
        deps = dependencies.get(k, ())
        band[k] = min(first[k], max(band[d] for d in deps)) if deps and k not in seeds else first[k]
    return band


def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or ``None`` (another C library)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


class RowBands(Callback):
    """A Dask callback that runs a write's ready tasks band by band (see the module notes).

    Dask runs every active callback on every local computation (``with RowBands(): dask.compute(x)``):
    this one orders the first graph that holds ``store-map`` tasks and, when ``keys`` are given, one of
    ``keys`` (the collection's own: a write computed meanwhile in another thread is left alone);
    other graphs keep Dask's order. ``rows``: block rows per band.
    """

    def __init__(self, rows: int = ROWS, keys: Iterable[Hashable] = ()) -> None:
        super().__init__()
        self.rows = int(rows)
        self.keys = list(keys)
        self.state: dict[str, Any] | None = None
        self.band: dict[Hashable, tuple[float, float]] = {}
        self.left: Counter[int] = Counter()  # block writes still to come, per block row
        self.settled = 0  # how many of the ready list's first entries are in order

    def _rank(self, key: Hashable) -> tuple[float, float]:
        b = self.band.get(key, LAST)
        return -b[0], -b[1]  # ascending along the list: the scheduler pops the earliest band, last

    def _sort(self, state: dict[str, Any]) -> None:
        """Order the ready list: all of it at the start, then only what the scheduler appended.

        The scheduler pops ready tasks from the end (each pop is seen by :meth:`_pretask`) and appends
        the tasks a finished one made ready; those are inserted where they belong (``insort_right``:
        after the tasks of their band, so among one band's tasks Dask's order stands, as a stable sort
        of the whole list would keep it, at O(log n) comparisons a task instead of n).
        """
        ready = state["ready"]
        if not isinstance(ready, list):  # another Dask's scheduler state: its own order, no error
            return
        if not 0 <= self.settled <= len(ready):
            self.settled = 0
        if self.settled == 0:
            ready.sort(key=self._rank)  # stable: Dask's order among one band's tasks
        else:
            new = ready[self.settled:]
            del ready[self.settled:]
            for k in new:
                bisect.insort_right(ready, k, key=self._rank)
        self.settled = len(ready)

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        deps = state["dependencies"]
        if self.state is not None or (self.keys and not any(k in deps for k in self.keys)):
            return
        band = task_bands(state["dependencies"], self.rows)
        if band:
            self.state, self.band, self.settled = state, band, 0
            self.left = Counter(yx[0] for k in band if (yx := output_block(k)) is not None)
            self._sort(state)

    def _pretask(self, key: Any, dsk: Any, state: dict[str, Any]) -> None:
        if state is self.state:
            self.settled -= 1  # popped from the ordered end

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict[str, Any], worker_id: Any) -> None:
        if state is not self.state:
            return
        yx = output_block(key)
        if yx is not None:
            self.left[yx[0]] -= 1
            if self.left[yx[0]] == 0 and _TRIM is not None:
                _TRIM(0)  # a block row is written: its freed halo state back to the system
        self._sort(state)

    def _finish(self, dsk: Any, state: dict[str, Any], errored: bool) -> None:
        if state is self.state:
            self.state, self.band, self.left = None, {}, Counter()
