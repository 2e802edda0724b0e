"""Tests of xr_unmix.tiling.map_tiles: shapes and chunks, NaN handling, exact stitching, blending."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from xr_unmix.tiling import TileSpec, map_tiles, taper


def _pixelwise(block: np.ndarray) -> np.ndarray:
    """(bands, h, w) -> (2, h, w), every output pixel a function of its own spectrum only."""
    return np.stack([block.sum(0), block[0] * block[-1]])


def _box3(block: np.ndarray) -> np.ndarray:
    """3x3 mean of band 0 (edge-replicated): receptive field 1 px."""
    p = np.pad(block[0], 1, mode="edge")
    h, w = block.shape[1:]
    return sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3))[None] / 9.0


def _diffuse(block: np.ndarray, n: int = 60) -> np.ndarray:
    """An unbounded receptive field, decaying geometrically: ``u = 0.5 * box3(u) + 0.5 * y`` iterated."""
    y = block[:1].astype(np.float64)
    u = y.copy()
    for _ in range(n):
        u = 0.5 * _box3(u) + 0.5 * y
    return u


@pytest.fixture
def cube() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((3, 45, 53)).astype(np.float32)


def test_shapes_and_chunks(cube: np.ndarray) -> None:
    out = map_tiles(cube, _pixelwise, 2)
    assert isinstance(out, np.ndarray) and out.shape == (2, 45, 53) and out.dtype == np.float32
    d = da.from_array(cube, chunks=(1, 16, 20))  # band axis split on purpose: merged inside
    for halo, blend in [(0, False), (3, False), (3, True)]:
        res = map_tiles(d, _pixelwise, 2, spec=TileSpec.spatial(halo, blend=blend), dtype=np.float64)
        assert res.chunks == ((2,), (16, 16, 13), (20, 20, 13))
        got = res.compute()
        assert got.shape == (2, 45, 53) and got.dtype == np.float64


def test_small_chunks_merged_below_halo(cube: np.ndarray) -> None:
    d = da.from_array(cube, chunks=(3, 20, 25))  # last chunks: 5 and 3 px
    res = map_tiles(d, _box3, 1, spec=TileSpec.spatial(4, blend=True))
    assert all(c >= 4 for c in res.chunks[1] + res.chunks[2])
    assert sum(res.chunks[1]) == 45 and sum(res.chunks[2]) == 53


@pytest.mark.parametrize("blend", [False, True])
def test_nan_pixel_only_poisons_itself(cube: np.ndarray, blend: bool) -> None:
    bad = cube.copy()
    bad[1, 7, 9] = np.nan  # one band of one pixel
    for arr in (bad, da.from_array(bad, chunks=(3, 16, 16))):
        out = np.asarray(map_tiles(arr, _box3, 1, spec=TileSpec.spatial(2, blend=blend)))
        nan = np.isnan(out[0])
        assert nan[7, 9] and nan.sum() == 1


@pytest.mark.parametrize("blend", [False, True])
def test_all_nan_tile_gives_nan_tile_without_calling_kernel(cube: np.ndarray, blend: bool) -> None:
    bad = cube.copy()
    bad[:, :20, :20] = np.nan  # the first 16x16 tile and its halo are all invalid
    calls: list[tuple[int, ...]] = []

    def kernel(block: np.ndarray) -> np.ndarray:
        calls.append(block.shape)
        assert np.isfinite(block).all()
        return _pixelwise(block)

    lazy = da.from_array(bad, chunks=(3, 16, 16))
    out = map_tiles(lazy, kernel, 2, spec=TileSpec.spatial(2, blend=blend)).compute()
    n_tiles = len(lazy.chunks[1]) * len(lazy.chunks[2])
    real = [s for s in calls if min(s) > 0]  # dask may probe with 0-size blocks for the meta
    assert len(real) == n_tiles - 1  # every tile but the all-invalid one reached the kernel
    assert np.isnan(out[:, :20, :20]).all() and np.isfinite(out[:, 20:, :]).all()
    assert np.isfinite(out[:, :20, 20:]).all()


@pytest.mark.parametrize("blend", [False, True])
def test_halo_pixelwise_stitches_exactly(cube: np.ndarray, blend: bool) -> None:
    full = map_tiles(cube, _pixelwise, 2)
    tiled = map_tiles(da.from_array(cube, chunks=(3, 10, 12)), _pixelwise, 2,
                      spec=TileSpec.spatial(4, blend=blend)).compute()
    np.testing.assert_array_equal(tiled, full)  # bit for bit, blended or not


def test_halo_covering_receptive_field_crops_exactly(cube: np.ndarray) -> None:
    full = map_tiles(cube, _box3, 1)
    tiled = map_tiles(da.from_array(cube, chunks=(3, 10, 12)), _box3, 1, spec=TileSpec.spatial(1)).compute()
    np.testing.assert_array_equal(tiled, full)
    # without halo, the tile borders are wrong: the test above can fail
    bad = map_tiles(da.from_array(cube, chunks=(3, 10, 12)), _box3, 1, spec=TileSpec.spatial(0)).compute()
    assert np.abs(bad - full).max() > 1e-2


def test_blend_comes_from_the_spec_not_from_kernel_attributes(cube: np.ndarray) -> None:
    class K:
        blend_tiles = True  # an attribute is not a contract: ignored

        def __call__(self, b: np.ndarray) -> np.ndarray:
            return _diffuse(b)

    d = da.from_array(cube, chunks=(3, 16, 16))
    crop = map_tiles(d, _diffuse, 1, spec=TileSpec.spatial(3)).compute()
    blended = map_tiles(d, _diffuse, 1, spec=TileSpec.spatial(3, blend=True)).compute()
    assert np.abs(crop - blended).max() > 0
    np.testing.assert_array_equal(map_tiles(d, K(), 1, spec=TileSpec.spatial(3)).compute(), crop)


def test_tile_spec_is_checked_and_frozen() -> None:
    import dataclasses

    with pytest.raises(ValueError, match="pixel-wise kernel needs no halo"):
        TileSpec(halo=4)
    with pytest.raises(ValueError, match="halo must be an integer >= 0"):
        TileSpec.spatial(-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        TileSpec().halo = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="spec must be a TileSpec"):
        map_tiles(np.ones((2, 3, 3)), _pixelwise, 2, {"halo": 2})  # type: ignore[arg-type]


def test_blending_error_decays_with_halo_and_is_continuous(cube: np.ndarray) -> None:
    full = map_tiles(cube, _diffuse, 1, dtype=np.float64)
    d = da.from_array(cube.astype(np.float64), chunks=(3, 16, 16))
    errs = {}
    for h in (1, 2, 4, 8):
        out = map_tiles(d, _diffuse, 1, spec=TileSpec.spatial(h, blend=True), dtype=np.float64).compute()
        errs[h] = float(np.abs(out - full).max())
    assert errs[1] > errs[2] > errs[4] > errs[8]
    assert errs[8] < 0.05 * errs[1]
    # blending removes the jump at a tile border that cropping leaves (same halo)
    crop = map_tiles(d, _diffuse, 1, spec=TileSpec.spatial(2), dtype=np.float64).compute()
    blend = map_tiles(d, _diffuse, 1, spec=TileSpec.spatial(2, blend=True), dtype=np.float64).compute()
    jump_crop = np.abs(np.diff(crop - full, axis=1))[0, 15].max()  # across the row-16 border
    jump_blend = np.abs(np.diff(blend - full, axis=1))[0, 15].max()
    assert jump_blend < 0.5 * jump_crop


def test_taper_is_a_partition_of_unity() -> None:
    h = 3
    a = taper(10 + 2 * h, h, True, True)
    b = taper(10 + h, h, True, False)
    assert a[0] < 0.05 and a[h + 5] == 1.0
    np.testing.assert_allclose(a[-2 * h:] + b[: 2 * h], 1.0)


def test_wrong_kernel_shape_is_an_error(cube: np.ndarray) -> None:
    with pytest.raises(RuntimeError, match="kernel returned shape"):
        map_tiles(cube, lambda b: b, 2)


def test_invalid_pixels_matches_isfinite() -> None:
    from xr_unmix.tiling import invalid_pixels

    rng = np.random.default_rng(3)
    block = rng.random((30, 16, 20)).astype(np.float32)
    assert invalid_pixels(block) is None
    block[3, 2, 5] = np.nan
    block[0, 7, 1] = np.inf
    block[29, 15, 19] = -np.inf
    block[:, 9, 9] = 3e37  # finite, but its band sum overflows float32: still a valid pixel
    ref = ~np.isfinite(block).all(0)
    got = invalid_pixels(block)
    assert got is not None and np.array_equal(got, ref)
    assert invalid_pixels(np.ones((3, 2, 2), np.int32)) is None  # integers: all valid
    with np.errstate(over="ignore"):
        b16 = block.astype(np.float16)  # 3e37 -> inf
    assert np.array_equal(invalid_pixels(b16), ~np.isfinite(b16).all(0))


def test_masked_kernel_does_not_touch_input_and_fills_zero() -> None:
    from xr_unmix.tiling import masked_kernel

    block = np.ones((4, 3, 3), dtype=np.float32)
    block[2, 1, 1] = np.nan
    before = block.copy()
    seen = {}

    def kernel(b: np.ndarray) -> np.ndarray:
        seen["b"] = b.copy()
        return b[:2]

    out = masked_kernel(block, kernel, 2, np.float32)
    np.testing.assert_array_equal(block, before)  # the input (maybe a shared Dask chunk) is unchanged
    assert np.isfinite(seen["b"]).all() and (seen["b"][:, 1, 1] == 0).all()
    assert np.isnan(out[:, 1, 1]).all() and (np.delete(out.reshape(2, -1), 4, axis=1) == 1).all()


def test_kernel_that_handles_nan_gets_the_raw_block(cube: np.ndarray) -> None:
    class K:
        calls = 0

        def __call__(self, b: np.ndarray) -> np.ndarray:
            K.calls += 1
            return b[:2] * 2  # NaN in, NaN out by itself

    c = cube.copy()
    c[:, :8, :8] = np.nan  # an all-invalid tile: still handed to the kernel
    c[1, 20, 20] = np.nan
    out = map_tiles(da.from_array(c, chunks=(-1, 8, 8)), K(), 2, TileSpec(handles_nan=True)).compute()
    assert K.calls == -(-c.shape[1] // 8) * -(-c.shape[2] // 8)
    assert np.isnan(out[:, :8, :8]).all() and np.isnan(out[1, 20, 20]) and not np.isnan(out[0, 20, 20])


# -- every estimator: tiled == untiled (xr_unmix.testing.assert_tiled_equals_full) ---------------

def _library(E):
    """Two members per class (the endmembers and a brighter copy): a bundle library."""
    import xarray as xr

    lib = xr.concat([E, E * 1.05], dim="endmember")
    names = [str(n) for n in E.endmember.values]
    return lib.assign_coords(endmember=[f"{n}_{i}" for i in range(2) for n in names],
                             **{"class": ("endmember", np.array(names * 2, dtype=object))})


def _estimator(name: str, E):
    """``cube -> result`` for an estimator; the models untrained (their tiling does not need weights)."""
    if name == "admm":
        from xr_unmix.models.uadmm import UADMMNet

        net = UADMMNet.from_endmembers(E)
        return lambda c: c.unmix.admm(net)
    if name == "deq":
        from xr_unmix.models.deq import DEQUnmix

        model = DEQUnmix.from_endmembers(E, seed=0)
        return lambda c: c.unmix.deq(model)
    if name == "bundles":
        lib = _library(E)
        return lambda c: c.unmix.bundles(lib, n_mc=4, seed=1)
    return lambda c: getattr(c.unmix, name)(E)


@pytest.mark.parametrize("name", ["sunsal", "fcls", "nnls", "ls", "admm", "deq", "bundles"])
def test_every_estimator_tiled_equals_full(scene, name: str) -> None:
    from xr_unmix.testing import assert_tiled_equals_full

    cube, E, _ = scene
    cube = cube.copy()
    cube[4, 5, 6] = np.nan  # one band of one pixel: NaN in every layer there, only there
    fn = _estimator(name, E)
    # thirds, and tiles smaller than a spatial model's halo (merged, not wrong)
    diff = assert_tiled_equals_full(cube, fn, tol=1e-5, chunks=[{"y": 8, "x": 11}, {"y": 5, "x": 7}])
    assert diff <= 1e-5
    full = fn(cube)
    layers = full.data_vars.values() if hasattr(full, "data_vars") else [full]
    assert all(bool(np.isnan(v.values[..., 5, 6]).all()) for v in layers)


def test_assert_tiled_equals_full_can_fail(scene) -> None:
    """The check itself fails on an estimator that sees its tile's edge."""
    from xr_unmix.testing import assert_tiled_equals_full

    cube, _, _ = scene

    def edge_aware(c):  # mean of each block: depends on the tiling
        import xarray as xr

        data = c.data.map_blocks(lambda b: np.broadcast_to(b.mean((1, 2), keepdims=True), b.shape)) \
            if c.chunks else np.broadcast_to(c.values.mean((1, 2), keepdims=True), c.shape)
        return xr.DataArray(data, dims=c.dims)

    with pytest.raises(AssertionError, match="tiled differs from full"):
        assert_tiled_equals_full(cube, edge_aware)
