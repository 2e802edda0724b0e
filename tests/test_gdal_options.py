"""GDAL/rasterio option values in the units GDAL reads them in (the audit after the 64-byte cache bug).

Values are checked, never times: the block cache is bytes in ``rasterio.Env`` and MB in a worker's
environment (tests/io/test_io.py and tests/test_distributed.py check those), and the network probe's
timeouts are seconds.
"""

from __future__ import annotations

import pytest

from xr_unmix.io import paths


def test_remote_probe_timeouts_are_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    import rasterio
    import rasterio.env

    seen: dict[str, object] = {}

    def fake_open(path: str, *args: object, **kwargs: object) -> object:
        for k in ("GDAL_HTTP_TIMEOUT", "GDAL_HTTP_CONNECTTIMEOUT", "GDAL_HTTP_MAX_RETRY"):
            seen[k] = rasterio.env.get_gdal_config(k)
        raise rasterio.errors.RasterioIOError("stop here")

    for k in ("GDAL_HTTP_TIMEOUT", "GDAL_HTTP_CONNECTTIMEOUT", "GDAL_HTTP_MAX_RETRY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(rasterio, "open", fake_open)
    with pytest.raises(Exception, match="stop here"):
        paths.check_raster_path("https://example.invalid/scene.tif")
    # GDAL reads both timeouts as whole seconds: 30, not 30000 (ms) or 0.03
    assert 1 <= paths.PROBE_TIMEOUT_S <= 300
    assert seen["GDAL_HTTP_TIMEOUT"] == seen["GDAL_HTTP_CONNECTTIMEOUT"] == paths.PROBE_TIMEOUT_S
    assert seen["GDAL_HTTP_MAX_RETRY"] == 0


def test_gdal_cache_is_bytes_in_env_and_mb_for_workers() -> None:
    from xr_unmix import runtime

    assert runtime.gdal_cache_bytes() == runtime.GDAL_CACHE_MB * 2**20
    assert 16 <= runtime.GDAL_CACHE_MB <= 4096  # MB: a value GDAL's env variable reads as MB (< 100000)
