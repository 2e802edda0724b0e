"""An in-memory cube chunked by the user: on a distributed cluster its blocks are scattered, so that
the graph stays small (no "Sending large graph" warning) and the result is the same."""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pytest
import xarray as xr

import xr_unmix  # noqa: F401
from xr_unmix._graph import SCATTER_BYTES, scatter_embedded
from xr_unmix.cluster import dask_scheduler


def _cube(nbytes: int) -> tuple[xr.DataArray, np.ndarray]:
    rng = np.random.default_rng(0)
    side = int((nbytes / (50 * 4)) ** 0.5)
    E = rng.random((50, 3)) + 0.1
    A = rng.dirichlet(np.ones(3), size=side * side).T
    Y = (E @ A).reshape(50, side, side).astype(np.float32)
    return xr.DataArray(Y, dims=("band", "y", "x")), E


def test_unchanged_without_a_cluster():
    cube, _ = _cube(4 * SCATTER_BYTES)
    data = cube.chunk({"y": 32, "x": 32}).data
    assert scatter_embedded(data) is data


@pytest.mark.slow
def test_chunked_numpy_cube_on_a_cluster_sends_no_large_graph():
    cube, E = _cube(12 << 20)  # 12 MiB: above distributed's 10 MB warning
    expect = cube.unmix.fcls(E).values  # numpy path
    chunked = cube.chunk({"y": 64, "x": 64})
    with dask_scheduler(workers=1, threads_per_worker=2), warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ab = chunked.unmix.fcls(E)
        graph_arrays = [v for v in dict(ab.data.dask).values() if isinstance(v, np.ndarray)]
        got = ab.compute()
    assert not [x for x in w if "large graph" in str(x.message)], [str(x.message) for x in w]
    assert not graph_arrays or sum(a.nbytes for a in graph_arrays) < SCATTER_BYTES
    np.testing.assert_allclose(got.values, expect, atol=1e-5)
    assert got.dims == ("endmember", "y", "x") and got.chunks is None


def test_below_threshold_kept_in_graph():
    cube, _ = _cube(SCATTER_BYTES // 4)
    data = cube.chunk({"y": 16, "x": 16}).data
    with dask.config.set(scheduler="threads"):
        assert scatter_embedded(data) is data
