"""Helpers for tests, in this package and downstream: synthetic cubes, tiling checks, CLI errors."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import xarray as xr


def make_endmembers(n_bands: int = 30, n_endmembers: int = 3, *, seed: int = 0) -> xr.DataArray:
    """Smooth, positive, well-separated synthetic spectra, DataArray (band, endmember)."""
    rng = np.random.default_rng(seed)
    wl = np.linspace(400.0, 2400.0, n_bands)
    cols = []
    for _ in range(n_endmembers):
        centres = rng.uniform(400, 2400, 3)
        widths = rng.uniform(150, 500, 3)
        amps = rng.uniform(0.2, 0.8, 3)
        s = 0.05 + sum(a * np.exp(-0.5 * ((wl - c) / w) ** 2)
                       for a, c, w in zip(amps, centres, widths, strict=True))
        cols.append(s)
    E = np.stack(cols, axis=1)
    return xr.DataArray(E, dims=("band", "endmember"),
                        coords={"band": np.arange(1, n_bands + 1), "wavelength": ("band", wl),
                                "endmember": np.array([f"m{i}" for i in range(n_endmembers)],
                                                      dtype=object)})


def make_cube(
    ny: int = 24,
    nx: int = 32,
    endmembers: xr.DataArray | None = None,
    *,
    snr_db: float | None = None,
    seed: int = 0,
    crs: str | None = "EPSG:32633",
    pixel_size: float = 30.0,
    chunks: dict[str, int] | None = None,
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """A georeferenced synthetic cube from Dirichlet abundances.

    Returns
    -------
    cube : DataArray (band, y, x), float32, with ``wavelength`` coordinate, CRS and 30 m transform
    endmembers : DataArray (band, endmember)
    abundances : DataArray (endmember, y, x), the truth
    """
    rng = np.random.default_rng(seed)
    E = make_endmembers(seed=seed) if endmembers is None else endmembers
    R = E.sizes["endmember"]
    A = rng.dirichlet(np.full(R, 0.7), size=(ny, nx)).transpose(2, 0, 1)
    Y = np.einsum("br,ryx->byx", E.values, A)
    if snr_db is not None:
        sigma = np.sqrt((Y**2).mean() / 10 ** (snr_db / 10))
        Y = Y + rng.normal(0, sigma, Y.shape)
    y = 4_000_000.0 - pixel_size * (np.arange(ny) + 0.5)
    x = 500_000.0 + pixel_size * (np.arange(nx) + 0.5)
    cube = xr.DataArray(
        Y.astype(np.float32), dims=("band", "y", "x"),
        coords={"band": E.band.values, "wavelength": ("band", E.wavelength.values), "y": y, "x": x},
        name="reflectance",
    )
    if crs is not None:
        import rioxarray  # noqa: F401

        cube = cube.rio.write_crs(crs)
    if chunks:
        cube = cube.chunk(chunks)
    truth = xr.DataArray(A, dims=("endmember", "y", "x"),
                         coords={"endmember": E.endmember.values, "y": y, "x": x})
    return cube, E, truth


def _layers(result: xr.DataArray | xr.Dataset) -> dict[str, xr.DataArray]:
    if isinstance(result, xr.Dataset):
        return {str(k): v for k, v in result.data_vars.items()}
    return {"": result}


def assert_tiled_equals_full(
    cube: xr.DataArray,
    fn: Callable[[xr.DataArray], xr.DataArray | xr.Dataset],
    tol: float = 1e-6,
    *,
    chunks: dict[str, int] | Sequence[dict[str, int]] | None = None,
) -> float:
    """Assert that an estimator on a tiled (Dask) copy of ``cube`` equals it on the in-memory cube.

    One check for every estimator: a solver (``lambda c: c.unmix.fcls(E)``, ``sunsal``, ``nnls``,
    ``ls``), a model (``lambda c: c.unmix.admm(net)``, ``c.unmix.deq(model)``) or bundle unmixing
    (``lambda c: c.unmix.bundles(lib, seed=0)``, a Dataset: every data variable is compared).

    Parameters
    ----------
    cube : DataArray (band, y, x)
        The scene, numpy- or Dask-backed (it is computed for the reference run).
    fn : callable
        ``cube -> DataArray (endmember, y, x)`` or a ``Dataset`` of such layers.
    tol : float
        Largest absolute difference allowed (a spatial model tiled with a finite halo differs a little
        from its untiled run; a pixel-wise estimator should not differ beyond rounding).
    chunks : dict or sequence of dicts, optional
        The tilings to check, each ``{"y": ny, "x": nx}``; default one, a third of each side.

    Returns
    -------
    float
        The largest absolute difference over every tiling and layer. NaNs must coincide, the tiled
        result must be lazy (Dask-backed) until computed, and shapes and layer names must agree.
    """
    full = _layers(fn(cube.compute() if cube.chunks else cube))
    if chunks is None:
        chunks = {"y": max(1, cube.sizes["y"] // 3), "x": max(1, cube.sizes["x"] // 3)}
    worst = 0.0
    for ch in [chunks] if isinstance(chunks, dict) else list(chunks):
        lazy = fn(cube.chunk(ch))
        assert all(v.chunks is not None for v in _layers(lazy).values()), \
            f"the tiled result is not lazy (chunks {ch})"
        tiled = _layers(lazy.compute())
        assert tiled.keys() == full.keys(), f"layers differ: {sorted(tiled)} vs {sorted(full)}"
        for name, ref in full.items():
            a, b = np.asarray(ref.values), np.asarray(tiled[name].values)
            what = f"{name or 'result'} with chunks {ch}"
            assert a.shape == b.shape, f"{what}: shapes differ: {a.shape} vs {b.shape}"
            nan_a, nan_b = np.isnan(a), np.isnan(b)
            assert (nan_a == nan_b).all(), f"{what}: NaN patterns differ between tiled and full"
            diff = float(np.abs(a[~nan_a] - b[~nan_b]).max()) if (~nan_a).any() else 0.0
            assert diff <= tol, f"{what}: tiled differs from full by {diff} > {tol}"
            worst = max(worst, diff)
    return worst


def write_cube_tif(cube: xr.DataArray, path: Any, *, nodata: float | None = None) -> Any:
    """Write a ``(band, y, x)`` cube as a tiled GeoTIFF with per-band ``wavelength`` tags (nm).

    The tags follow GDAL's ENVI convention, which :func:`xr_unmix.io.open_cube` reads back.
    """
    import rasterio
    import rioxarray  # noqa: F401

    c = cube.transpose("band", "y", "x")
    if nodata is not None:
        c = c.rio.write_nodata(nodata)
    c.drop_vars([v for v in ("wavelength",) if v in c.coords]).rio.to_raster(
        path, tiled=True, blockxsize=16, blockysize=16)
    if "wavelength" in cube.coords:
        with rasterio.open(path, "r+") as dst:
            for i, w in enumerate(np.asarray(cube.wavelength.values), start=1):
                dst.update_tags(i, wavelength=f"{float(w):.4f}", wavelength_units="Nanometers")
    return path


def assert_cli_error(result: Any, pattern: str) -> str:
    """Assert that a ``click.testing.Result`` is a user error of the command line.

    A user error exits with status 2 and prints exactly one line, ``Error: ...``, that matches the
    regular expression ``pattern`` (:func:`re.search`), and no traceback. Returns that line.
    """
    out = result.output.strip()
    assert result.exit_code == 2, f"exit status {result.exit_code}, not 2: {out}"
    assert "Traceback" not in out and len(out.splitlines()) == 1, f"not one line: {out}"
    assert out.startswith("Error: "), out
    assert re.search(pattern, out), f"{pattern!r} not in {out!r}"
    return out


def tamper_model_bytes(data: bytes, *, tensors: dict[str, Callable[[Any], Any]] | None = None,
                       config: dict[str, Any] | None = None, meta: dict[str, Any] | None = None,
                       raw_meta: str | None = None) -> bytes:
    """Serialised model bytes (a model file's content, or a worker payload) altered as an attacker or a
    bit flip would: for the tests that a tampered model is refused, in a file and on a worker alike.

    Parameters
    ----------
    data : bytes
        Output of :func:`xr_unmix.models.model_to_bytes` (or a ``.safetensors`` model file's bytes).
    tensors : dict, optional
        ``{name: fn}``: each named tensor replaced by ``fn(tensor)`` (a ``torch.Tensor``).
    config : dict, optional
        Entries merged into the JSON config.
    meta : dict, optional
        Entries merged into the JSON header (``class``, ``format_version``, ...).
    raw_meta : str, optional
        Replaces the whole ``xr_unmix`` metadata string (e.g. JSON that is not an object).

    Returns
    -------
    bytes
        A well-formed safetensors blob with the changes (the tensors' bytes rewritten as needed).
    """
    import json

    from safetensors.torch import load, save

    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    ts = load(bytes(data))
    for k, fn in (tensors or {}).items():
        ts[k] = fn(ts[k])
    if raw_meta is None:
        m = json.loads(header["__metadata__"]["xr_unmix"])
        m.update(meta or {})
        m["config"].update(config or {})
        raw_meta = json.dumps(m)
    return save(ts, metadata={"xr_unmix": raw_meta})


def tamper_model_file(path: Any, out: Any, **changes: Any) -> Any:
    """Write ``out``: the model file ``path`` altered by :func:`tamper_model_bytes` (``changes``)."""
    from pathlib import Path

    Path(out).write_bytes(tamper_model_bytes(Path(path).read_bytes(), **changes))
    return out
