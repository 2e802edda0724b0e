"""Halo tiling whose memory does not hold rows of input chunks (xr_unmix._halo), checked structurally.

No RSS or timing here: the property is read off the task graph (which tasks need an input chunk, and how
many input chunks Dask's own order keeps alive at once), and the values are compared bit for bit with
the ``map_overlap`` path they replace.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from dask.core import get_deps
from dask.order import order

from xr_unmix import _halo
from xr_unmix.tiling import TileSpec, map_tiles


def _box3(block: np.ndarray) -> np.ndarray:
    """(bands, h, w) -> (2, h, w): 3x3 means of bands 0 and 1 (receptive field 1 px)."""
    p = np.pad(block[:2], ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = block.shape[1:]
    return sum(p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def _diffuse(block: np.ndarray) -> np.ndarray:
    """An unbounded, geometrically decaying receptive field (a stand-in for an equilibrium model)."""
    y = block[:2].astype(np.float64)
    u = y.copy()
    for _ in range(20):
        u = 0.5 * _box3(u) + 0.5 * y
    return u


def _lazy(ny: int, nx: int, c: int = 8, bands: int = 3) -> da.Array:
    """A (bands, ny*c, nx*c) float32 dask cube, every chunk made from its position (never in memory)."""

    def block(block_info: dict | None = None) -> np.ndarray:
        (_, (y0, y1), (x0, x1)) = block_info[None]["array-location"]
        rng = np.random.default_rng([y0, x0])
        return rng.random((bands, y1 - y0, x1 - x0), dtype=np.float32)

    return da.map_blocks(block, chunks=((bands,), (c,) * ny, (c,) * nx), dtype=np.float32,
                         meta=np.empty((0, 0, 0), np.float32))


@pytest.fixture
def no_recompute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_halo, "RECOMPUTE_MIN_CHUNKS", 10**9)


def _both(data: da.Array, kernel, spec: TileSpec, monkeypatch: pytest.MonkeyPatch):
    new = np.asarray(map_tiles(data, kernel, 2, spec).compute(scheduler="threads"))
    monkeypatch.setattr(_halo, "RECOMPUTE_MIN_CHUNKS", 10**9)
    old = np.asarray(map_tiles(data, kernel, 2, spec).compute(scheduler="threads"))
    monkeypatch.undo()
    return new, old


@pytest.mark.parametrize("blend", [False, True])
@pytest.mark.parametrize("kernel", [_box3, _diffuse])
def test_recomputed_halos_equal_map_overlap_bit_for_bit(blend: bool, kernel, monkeypatch) -> None:
    rng = np.random.default_rng(3)
    a = rng.random((3, 61, 97)).astype(np.float32)
    a[:, 17, 40] = np.nan  # an invalid pixel next to a tile border
    a[1, 30:34, 60:70] = np.nan
    data = da.from_array(a, chunks=(1, (13, 16, 16, 16), (20, 7, 30, 25, 15)))  # uneven, one < halo
    spec = TileSpec.spatial(4, blend=blend)
    assert _halo.use_recompute((1, 4, 5))
    new, old = _both(data, kernel, spec, monkeypatch)
    assert new.shape == (2, 61, 97)
    np.testing.assert_array_equal(new, old)  # NaNs in the same places, every value identical
    assert np.isnan(new[:, 17, 40]).all()


def test_recomputed_halos_are_exact_for_a_finite_receptive_field(monkeypatch) -> None:
    a = np.asarray(_lazy(4, 6).compute())
    out = map_tiles(_lazy(4, 6), _box3, 2, TileSpec.spatial(1)).compute()
    np.testing.assert_array_equal(out, _box3(a))


def _alive(arr: da.Array, names: set[str]) -> tuple[int, int]:
    """Most input chunks held at once (``names``: the input and its copy) and most dependents of one chunk
    of the input itself (the first name), in Dask's order."""
    dsk = dict(arr.__dask_graph__())
    deps, dependents = get_deps(dsk)
    o = order(dsk, dependencies=deps)
    need = {k: len(v) for k, v in dependents.items()}
    held: set = set()
    most = 0
    for key in sorted(dsk, key=o.__getitem__):
        held.add(key)
        for d in deps[key]:
            need[d] -= 1
            if not need[d]:
                held.discard(d)
        most = max(most, sum(isinstance(k, tuple) and k[0] in names for k in held))
    first = min(names, key=len)
    fan = max(len(dependents[k]) for k in dsk if isinstance(k, tuple) and k[0] == first)
    return most, fan


@pytest.mark.parametrize("blend", [False, True])
def test_input_chunks_alive_stay_bounded_on_a_wide_grid(blend: bool) -> None:
    spec = TileSpec.spatial(2, blend=blend)
    held = {}
    for nx in (4, 16):
        data = _lazy(4, nx)
        out = map_tiles(data, _box3, 2, spec)
        names = {data.name, f"{data.name}-halo-copy"}
        held[nx], fan = _alive(out, names)
        assert fan == 1  # every input chunk feeds exactly one task: its own tile
    assert max(held.values()) <= 8, held  # a few (3-6 seen: ties in the order follow the keys), any width


@pytest.mark.usefixtures("no_recompute")
def test_map_overlap_path_holds_a_row_of_chunks() -> None:
    """The check above can fail: through ``map_overlap`` the chunks alive grow with the grid's width."""
    held = {}
    for nx in (4, 16):
        data = _lazy(4, nx)
        held[nx], fan = _alive(map_tiles(data, _box3, 2, TileSpec.spatial(2)), {data.name})
        assert fan > 1
    assert held[16] > held[4] >= 4, held


def test_small_grids_keep_map_overlap() -> None:
    assert not _halo.use_recompute((1, 2, 9))
    data = _lazy(2, 9)
    out = map_tiles(data, _box3, 2, TileSpec.spatial(1))
    assert not any(str(name).endswith("-halo-copy") for name in out.dask.layers)


def test_an_older_dask_without_task_spec_keeps_map_overlap(monkeypatch) -> None:
    """pyproject allows Dask >= 2024.6, which has no ``dask._task_spec``: the halo path must fall back."""
    import builtins

    real_import = builtins.__import__

    def no_task_spec(name, *args, **kwargs):
        if name == "dask._task_spec":
            raise ImportError("No module named 'dask._task_spec'")
        return real_import(name, *args, **kwargs)

    assert _halo.use_recompute((1, 4, 5))
    monkeypatch.setattr(builtins, "__import__", no_task_spec)
    assert not _halo.use_recompute((1, 4, 5))
