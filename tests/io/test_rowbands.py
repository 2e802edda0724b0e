"""The writers compute in row bands (xr_unmix.io._rowbands), checked structurally, never by time or RSS.

A halo map (blended 3x3 means, the stand-in for a spatial network) of a lazy cube whose chunk reads are
logged: written with ``to_zarr``/``to_cog``, the blocks are stored top to bottom and no input chunk is
read more than a few rows ahead of the stored rows; the files are those of the whole-graph write (Zarr
values, COG bytes); an error in a later band leaves nothing at the target; the progress bar is one bar
over the one computation.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr
from dask.callbacks import Callback

import rioxarray  # noqa: F401  (the .rio accessor)
from xr_unmix import _progress
from xr_unmix.errors import OutputError
from xr_unmix.io import _rowbands, to_cog, to_zarr
from xr_unmix.tiling import TileSpec, map_tiles

C = 16  # chunk side, px (the COG block size too: its write blocks are the chunks)
NY, NX = 6, 4  # chunk grid


def _box3(block: np.ndarray) -> np.ndarray:
    """(bands, h, w) -> (2, h, w): 3x3 means of bands 0 and 1 (receptive field 1 px)."""
    p = np.pad(block[:2], ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = block.shape[1:]
    return sum(p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


class _Log:
    """Events in the order they happen: ``("read", row)`` from the source, ``("store", row)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def add(self, what: str, row: int) -> None:
        with self.lock:
            self.events.append((what, row))


class _Stores(Callback):
    """Logs every ``store-map`` task (one output block written) as it finishes."""

    def __init__(self, log: _Log) -> None:
        super().__init__()
        self.log = log

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        yx = _rowbands.output_block(key)
        if yx is not None:
            self.log.add("store", yx[0])


def _map(log: _Log, fail_row: int | None = None) -> xr.DataArray:
    """A (endmember, y, x) blended halo map of a lazy (3, NY*C, NX*C) cube that logs its chunk reads."""

    def block(block_info: dict | None = None) -> np.ndarray:
        (_, (y0, y1), (x0, x1)) = block_info[None]["array-location"]
        log.add("read", y0 // C)
        if fail_row is not None and y0 // C == fail_row:
            raise OSError(f"unreadable chunk at row {fail_row}")
        return np.random.default_rng([y0, x0]).random((3, y1 - y0, x1 - x0), dtype=np.float32)

    cube = da.map_blocks(block, chunks=((3,), (C,) * NY, (C,) * NX), dtype=np.float32,
                         meta=np.empty((0, 0, 0), np.float32))
    out = map_tiles(cube, _box3, 2, TileSpec.spatial(2, blend=True))
    arr = xr.DataArray(out, dims=("endmember", "y", "x"), name="abundance",
                       coords={"endmember": ["a", "b"], "y": 1000.0 - 10.0 * np.arange(NY * C),
                               "x": 500.0 + 10.0 * np.arange(NX * C)})
    return arr.rio.write_crs("EPSG:32633")


@pytest.fixture
def whole_graph(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to turn the row bands off (the writers then run in Dask's own order)."""
    return lambda: monkeypatch.setattr(_rowbands, "STORE_PREFIX", "no-such-layer-")


def _write(kind: str, path: Path, log: _Log, **kw: Any) -> Path:
    with dask.config.set(scheduler="sync"), _Stores(log):
        return (to_zarr if kind == "zarr" else to_cog)(_map(log, **kw), path, **(
            {"blocksize": 16} if kind == "cog" else {}))


def _front(events: list[tuple[str, int]]) -> tuple[list[int], int]:
    """Rows of the stores in order, and how far (in chunk rows) a read ran ahead of the stored rows."""
    stored = [0] * NY
    done, ahead = -1, -math.inf
    for what, row in events:
        if what == "store":
            stored[row] += 1
            while done + 1 < NY and stored[done + 1] == NX:
                done += 1
        else:
            ahead = max(ahead, row - done)
    return [r for w, r in events if w == "store"], int(ahead)


def test_bands_follow_the_store_blocks_and_pull_inputs_to_the_first_band_that_needs_them() -> None:
    # a: input; b: a chunk of row 1; c: a sliver cut from it; store-map tasks: block writes of rows 0,
    # 1 (band 0 with rows=2) and 3 (band 1); g: the final task gathering the writes
    st = _rowbands.STORE_PREFIX
    deps: dict[Any, set[Any]] = {
        "a": set(), ("b", 0, 1, 0): {"a"}, ("c", 0, 1, 0): {("b", 0, 1, 0)},
        (st + "x", 0, 0, 0): {"a", ("c", 0, 1, 0)}, (st + "x", 0, 1, 0): {("b", 0, 1, 0)},
        (st + "x", 0, 3, 1): {("c", 0, 1, 0)}, "g": {(st + "x", 0, 0, 0), (st + "x", 0, 1, 0),
                                                   (st + "x", 0, 3, 1)}}
    band = _rowbands.task_bands(deps, rows=2)
    assert band[(st + "x", 0, 0, 0)] == (0, 0) and band[(st + "x", 0, 3, 1)] == (1, 1)
    assert band["a"] == band[("b", 0, 1, 0)] == band[("c", 0, 1, 0)] == (0, 0)
    assert band["g"] == (1, 1)  # gathers every write: the last band's
    assert _rowbands.task_bands({"a": set(), "b": {"a"}}) == {}  # nothing written: Dask's order

    # the callback orders its own write's graph (by its keys), not another one running meanwhile
    ready = ["a", (st + "x", 0, 3, 1)]
    other = _rowbands.RowBands(rows=2, keys=["not-this-graph"])
    other._start_state(None, {"dependencies": deps, "ready": list(ready)})
    assert other.state is None
    own = _rowbands.RowBands(rows=2, keys=["g"])
    state = {"dependencies": deps, "ready": list(ready)}
    own._start_state(None, state)
    assert own.state is state and state["ready"] == [(st + "x", 0, 3, 1), "a"]  # band 0 is popped first


def test_ready_list_kept_in_order_as_a_stable_sort_would() -> None:
    """The scheduler pops from the end and appends what became ready; the callback inserts the new
    tasks only, and the list must be what a stable sort of the whole list by band gives."""
    rng = np.random.default_rng(0)
    keys = [("t", i) for i in range(400)]
    cb = _rowbands.RowBands()
    cb.band = {k: (int(rng.integers(0, 5)), int(rng.integers(0, 3))) for k in keys}
    state: dict[str, Any] = {"ready": keys[:50]}
    cb.state = state
    cb._sort(state)
    pending = keys[50:]
    while state["ready"] or pending:
        for _ in range(min(len(state["ready"]), int(rng.integers(1, 3)))):
            state["ready"].pop()
            cb._pretask(None, None, state)
        n = int(rng.integers(0, 4))
        state["ready"].extend(pending[:n])
        pending = pending[n:]
        expect = sorted(state["ready"], key=cb._rank)  # stable: appended after their band's tasks
        cb._posttask(("t", -1), None, None, state, None)
        assert state["ready"] == expect


@pytest.mark.parametrize("kind", ["zarr", "cog"])
def test_writers_store_top_to_bottom_and_read_only_a_few_rows_ahead(kind: str, tmp_path: Path,
                                                                     whole_graph) -> None:
    log = _Log()
    _write(kind, tmp_path / f"a.{'zarr' if kind == 'zarr' else 'tif'}", log)
    rows, ahead = _front(log.events)
    assert len(rows) >= NY * NX // 4 and rows == sorted(rows)  # every block row after the one above
    # a tile of row r+1 is blended into row r and needs the halo of row r+2: 3 rows ahead at most
    assert ahead <= 3, f"an input chunk was read {ahead} rows below the last complete output row"
    assert sum(w == "read" for w, _ in log.events) == 2 * NY * NX  # once, plus once for the halos

    whole_graph()  # the same graph in Dask's own order: the property above is the bands' doing
    log = _Log()
    _write(kind, tmp_path / f"b.{'zarr' if kind == 'zarr' else 'tif'}", log)
    rows, ahead = _front(log.events)
    assert rows != sorted(rows) or ahead > 3


def _bytes_without_date(path: Path) -> bytes:
    with rasterio.open(path) as src:
        stamp = src.tags()["date_created"]
    return path.read_bytes().replace(stamp.encode(), b"X" * len(stamp))


def test_banded_files_are_the_whole_graph_files(tmp_path: Path, whole_graph) -> None:
    banded = (to_zarr(_map(_Log()), tmp_path / "b.zarr"), to_cog(_map(_Log()), tmp_path / "b.tif"))
    whole_graph()
    whole = (to_zarr(_map(_Log()), tmp_path / "w.zarr"), to_cog(_map(_Log()), tmp_path / "w.tif"))
    a, b = xr.open_zarr(banded[0]), xr.open_zarr(whole[0])
    np.testing.assert_array_equal(a["abundance"].values, b["abundance"].values)
    for ds in (a, b):  # the write's time stamps
        for k in ("date_created", "history"):
            ds["abundance"].attrs.pop(k)
    xr.testing.assert_identical(a, b)
    assert _bytes_without_date(banded[1]) == _bytes_without_date(whole[1])


@pytest.mark.parametrize("kind", ["zarr", "cog"])
def test_an_error_in_a_later_band_leaves_nothing(kind: str, tmp_path: Path) -> None:
    log = _Log()
    target = tmp_path / f"a.{'zarr' if kind == 'zarr' else 'tif'}"
    with pytest.raises(OutputError, match="unreadable chunk at row 4"):
        _write(kind, target, log, fail_row=4)
    assert any(w == "store" for w, _ in log.events)  # the bands above were written: mid-write
    assert list(tmp_path.iterdir()) == []  # no output, no scratch


class _Bar:
    bars: list[_Bar] = []

    def __init__(self, **kwargs: Any) -> None:
        self.total, self.n, self.closed = kwargs["total"], 0, False
        _Bar.bars.append(self)

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


def test_progress_is_one_bar_over_the_whole_write(tmp_path: Path, monkeypatch) -> None:
    _Bar.bars = []
    monkeypatch.setattr(_progress, "progress_bar", _Bar)
    with dask.config.set(scheduler="threads", num_workers=2):
        to_zarr(_map(_Log()), tmp_path / "a.zarr", progress=True)
    assert len(_Bar.bars) == 1
    bar = _Bar.bars[0]
    assert bar.closed and bar.n == bar.total > 2 * NY * NX
