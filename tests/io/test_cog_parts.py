"""to_cog on a distributed cluster: blocks written as part files (no distributed lock), then
assembled on the client; the COG is the one local threads write, byte for byte."""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pytest
import rasterio

import xr_unmix
from xr_unmix.errors import OutputError
from xr_unmix.io import _cog_parts, to_cog
from xr_unmix.testing import make_cube

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as c:
        yield c


def _bytes_without_date(path: Path) -> bytes:
    with rasterio.open(path) as src:
        stamp = src.tags()["date_created"]
    return path.read_bytes().replace(stamp.encode(), b"X" * len(stamp))


def test_cog_on_a_cluster_is_the_threads_cog(client, tmp_path: Path, monkeypatch) -> None:
    cube, E, _ = make_cube(40, 72, seed=21, chunks={"y": 16, "x": 32})  # ragged edge chunks
    cube = cube.where(~((cube.x == cube.x[5]) & (cube.y == cube.y[3])))  # one invalid pixel
    ab = xr_unmix.fcls(cube, E)
    stored: list[str] = []
    orig = _cog_parts.TileParts.__setitem__

    def spy(self, key, block):
        stored.append(_cog_parts._part_name(key[1].start, key[2].start))
        orig(self, key, block)

    monkeypatch.setattr(_cog_parts.TileParts, "__setitem__", spy)  # processes=False: same process
    with dask.config.set(scheduler="threads"):
        th = to_cog(ab, tmp_path / "th.tif", blocksize=16)
    assert stored == []  # local threads write into the GeoTIFF directly
    cl = to_cog(ab, tmp_path / "cl.tif", blocksize=16)
    assert len(stored) == 3 * 5  # 40x72 px written in 16-px blocks (the largest chunk side, in tiles)
    with rasterio.open(cl) as a, rasterio.open(th) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.overviews(1) == b.overviews(1) and a.overviews(1)
        assert a.tags().keys() == b.tags().keys() and a.descriptions == b.descriptions
    assert _bytes_without_date(cl) == _bytes_without_date(th)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cl.tif", "th.tif"]  # no scratch left


def test_a_missing_part_is_an_error_not_a_blank_tile(tmp_path: Path) -> None:
    import rasterio.transform

    folder = tmp_path / "parts"
    folder.mkdir()
    gtiff = tmp_path / "s.tif"
    with rasterio.open(gtiff, "w", driver="GTiff", width=32, height=16, count=2, dtype="float32",
                       tiled=True, blockxsize=16, blockysize=16,
                       transform=rasterio.transform.from_origin(0, 16, 1, 1)):
        pass
    target = _cog_parts.TileParts(str(folder))
    chunks = ((2,), (16,), (16, 16))

    def first() -> None:  # assemble deletes each part it has copied
        target[slice(0, 2), slice(0, 16), slice(0, 16)] = np.ones((2, 16, 16), np.float32)

    first()
    with pytest.raises(OutputError, match="row 0, column 16 was not written"):
        _cog_parts.assemble(folder, gtiff, chunks)
    first()
    target[slice(0, 2), slice(0, 16), slice(16, 32)] = np.ones((2, 8, 16), np.float32)
    with pytest.raises(OutputError, match="has 256 values, expected 512"):
        _cog_parts.assemble(folder, gtiff, chunks)
    first()
    target[slice(0, 2), slice(0, 16), slice(16, 32)] = np.full((2, 16, 16), 2, np.float32)
    _cog_parts.assemble(folder, gtiff, chunks)
    with rasterio.open(gtiff) as src:
        data = src.read()
    assert (data[:, :, :16] == 1).all() and (data[:, :, 16:] == 2).all()
    assert list(folder.iterdir()) == []
