"""EMIT L2A reflectance (and L1B radiance) NetCDF: orthorectified through the GLT, or the swath.

Layout followed (EMIT L2A RFL V001, as the LP DAAC distributes it; L1B RAD V001 likewise):

- root: ``reflectance`` (``radiance`` for L1B) ``(downtrack, crosstrack, bands)`` float32 with
  ``_FillValue`` -9999; global attributes ``geotransform`` (6 GDAL numbers) and ``spatial_ref`` (WKT)
  describing the orthorectified grid;
- group ``sensor_band_parameters``: ``wavelengths``, ``fwhm`` (nm) and, in L2A, ``good_wavelengths``
  (1 good, 0 bad: 41 of the 285 bands, which hold a constant -0.01, not the fill value);
- group ``location``: ``glt_x`` / ``glt_y`` ``(ortho_y, ortho_x)``, the 1-based crosstrack / downtrack
  index of the swath pixel that fills each ortho pixel (0: none), and ``lat`` / ``lon`` / ``elev``
  ``(downtrack, crosstrack)``.

The orthorectified cube is lazy: each output block reads only the window of the swath its GLT block
names (one task per block, :func:`_ortho_block`), so a scene is never read whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from ._hdf import h5netcdf_engine
from .bands import finish_bands, ignore_windows
from .gdal import auto_chunk

PathLike = str | os.PathLike[str]

FILL_VALUE = -9999.0
_VARS = ("reflectance", "radiance")


def _engine() -> str:
    return h5netcdf_engine()


def is_emit(path: PathLike) -> bool:
    """True when ``path`` is an HDF5/NetCDF-4 file laid out as an EMIT L2A RFL / L1B RAD granule."""
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - the 'products' extra
        raise InputError(f"{path} is NetCDF-4/HDF5; reading it needs h5netcdf: "
                         "pip install 'xr-unmix[products]'") from exc
    try:
        with h5py.File(path, "r") as f:
            return "sensor_band_parameters" in f and any(v in f for v in _VARS)
    except OSError:
        return False


def open_emit(path: PathLike, *, ortho: bool = True, chunks: dict[str, int] | int | str | None = None,
              bad_bands: str = "drop", ignore_regions: Any = "auto", mask: PathLike | None = None,
              mask_flags: str | Sequence[str] = "aggregate") -> xr.DataArray:
    """Open an EMIT granule as a ``(band, y, x)`` cube, orthorectified or as the swath.

    Parameters
    ----------
    path : an ``EMIT_L2A_RFL_*.nc`` (or ``EMIT_L1B_RAD_*.nc``) file
    ortho : bool
        True: on the ``geotransform``/``spatial_ref`` grid through the GLT (``y``/``x`` are latitude /
        longitude of pixel centres, CRS and transform set; pixels no swath pixel fills are NaN).
        False: the swath, ``y`` = downtrack and ``x`` = crosstrack line/sample numbers, with 2-D
        ``lat``/``lon`` coordinates and no CRS.
    chunks : int, dict, "auto" or None
        Spatial block size. The ortho cube is always dask-backed (``None`` means ``"auto"``).
    bad_bands, ignore_regions
        As for :func:`xr_unmix.open_cube`; bad bands are dropped before orthorectification, so they are
        never read.
    mask : path of the granule's ``EMIT_L2A_MASK_*.nc``, optional
        Pixels whose selected flags are set become NaN (in every band), before orthorectification.
    mask_flags : str or sequence of str
        Which flags: ``"aggregate"`` (default: the product's Aggregate Flag), or any of ``"cloud"``,
        ``"cirrus"``, ``"water"``, ``"spacecraft"``, ``"dilated_cloud"`` (or the MASK band names).
        See :mod:`xr_unmix.io.emit_mask`.

    Raises
    ------
    InputError
        When ``ortho=True`` and the file has no ``location/glt_x``/``glt_y`` or no ``geotransform``.
    """
    engine = _engine()
    p = Path(path)
    root = xr.open_dataset(p, engine=engine, chunks=None)
    var = next((v for v in _VARS if v in root.data_vars), None)
    if var is None:
        raise InputError(f"{p}: no 'reflectance' or 'radiance' variable; not an EMIT L2A/L1B granule")
    sbp = xr.open_dataset(p, engine=engine, group="sensor_band_parameters")
    wl = np.asarray(sbp["wavelengths"].values, dtype=np.float64)
    fwhm = np.asarray(sbp["fwhm"].values, dtype=np.float64) if "fwhm" in sbp else None
    good = (np.asarray(sbp["good_wavelengths"].values) != 0) if "good_wavelengths" in sbp else None
    src = root[var]
    if src.sizes[src.dims[2]] != wl.size:
        raise InputError(f"{p}: {var} has {src.sizes[src.dims[2]]} bands but "
                         f"sensor_band_parameters/wavelengths has {wl.size}")
    loc = _location(p, engine)
    flagged = None
    if mask is not None:
        from .emit_mask import read_mask

        flagged = read_mask(mask, mask_flags, (src.shape[0], src.shape[1]))
    if ortho:
        cube = _ortho(p, root, src, loc, chunks, _kept(wl, good, bad_bands, ignore_regions), flagged)
    else:
        cube = _swath(src, loc, chunks)
        if flagged is not None:
            cube = cube.where(~xr.DataArray(flagged, dims=("y", "x")))
    keep = cube.attrs.pop("_band_index", None)
    sel = slice(None) if keep is None else keep
    cube.attrs.update(sensor="EMIT", product=str(root.attrs.get("title", var)), source=str(p),
                      orthorectified=int(ortho), long_name=var, units=str(src.attrs.get("units", "1")))
    cube.encoding["source"] = str(p)
    if flagged is not None:
        from .emit_mask import flag_names

        cube.attrs.update(mask_source=str(mask), mask_flags=str(flag_names(mask_flags)),
                          mask_swath_pixels_flagged=int(flagged.sum()))
    return finish_bands(cube, wavelength=wl[sel], fwhm=None if fwhm is None else fwhm[sel],
                        good=None if good is None else good[sel], bad_bands=bad_bands,
                        ignore_regions=ignore_regions, product=True,
                        good_source="EMIT good_wavelengths" if good is not None else "none",
                        dropped_before=0 if keep is None else wl.size - len(keep))


def _kept(wl: np.ndarray, good: np.ndarray | None, bad_bands: str, regions: Any) -> np.ndarray:
    """Indices of the bands to orthorectify: all for ``"keep"``, else the good ones outside the
    ignore windows (the rest would be dropped afterwards: they are never read)."""
    if bad_bands == "keep":
        return np.arange(wl.size)
    from .bands import in_windows

    mask = ~in_windows(wl, ignore_windows(regions, product=True))
    if good is not None:
        mask &= good
    return np.flatnonzero(mask) if mask.any() else np.arange(wl.size)


def _location(p: Path, engine: str) -> xr.Dataset | None:
    try:
        return xr.open_dataset(p, engine=engine, group="location")
    except (OSError, KeyError, ValueError):
        return None


def _swath(src: xr.DataArray, loc: xr.Dataset | None, chunks: Any) -> xr.DataArray:
    d, c, b = src.dims
    cube = src.rename({d: "y", c: "x", b: "band"}).transpose("band", "y", "x")
    cube = cube.drop_vars([k for k in cube.coords if k not in ("y", "x")])
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    cube = cube.assign_coords(y=np.arange(ny), x=np.arange(nx), band=np.arange(1, cube.sizes["band"] + 1))
    cube.y.attrs.update(long_name="downtrack line")
    cube.x.attrs.update(long_name="crosstrack sample")
    if loc is not None and "lat" in loc and "lon" in loc:
        cube = cube.assign_coords(lat=(("y", "x"), loc["lat"].values, dict(loc["lat"].attrs)),
                                  lon=(("y", "x"), loc["lon"].values, dict(loc["lon"].attrs)))
    if chunks is not None:
        side = _side(chunks, cube.sizes["band"])
        cube = cube.chunk({"band": -1, "y": side, "x": side})
    cube.attrs["geometry"] = "swath (downtrack, crosstrack)"
    return cube


def _side(chunks: Any, n_bands: int) -> int:
    if chunks in (None, "auto"):
        return auto_chunk(n_bands)
    if isinstance(chunks, int):
        return chunks
    if isinstance(chunks, dict):
        return int(chunks.get("y", chunks.get("x", auto_chunk(n_bands))))
    raise ValueError(f"chunks must be an int, a dict, 'auto' or None; got {chunks!r}")


def _glt(p: Path, root: xr.Dataset, loc: xr.Dataset | None) -> tuple[np.ndarray, np.ndarray, list]:
    """0-based (row, col) swath index of every ortho pixel (-1: none), and the geotransform."""
    if loc is None or "glt_x" not in loc or "glt_y" not in loc:
        raise InputError(f"{p} has no geometry look-up table (location/glt_x, location/glt_y), so it "
                         "cannot be orthorectified; open the swath with open_cube(path, ortho=False)")
    gt = root.attrs.get("geotransform")
    if gt is None or np.size(gt) != 6:
        raise InputError(f"{p} has a GLT but no 6-number 'geotransform' attribute; open the swath "
                         "with open_cube(path, ortho=False)")
    gx = np.nan_to_num(np.asarray(loc["glt_x"].values, dtype=np.float64), nan=0).astype(np.int64)
    gy = np.nan_to_num(np.asarray(loc["glt_y"].values, dtype=np.float64), nan=0).astype(np.int64)
    none = (gx <= 0) | (gy <= 0)
    rows, cols = np.where(none, -1, gy - 1), np.where(none, -1, gx - 1)
    return rows, cols, [float(v) for v in np.ravel(gt)]


def _ortho(p: Path, root: xr.Dataset, src: xr.DataArray, loc: xr.Dataset | None, chunks: Any,
           band_index: np.ndarray, flagged: np.ndarray | None = None) -> xr.DataArray:
    import dask
    import dask.array as da
    import rioxarray  # noqa: F401  (registers .rio: open_cube may be the first use)
    from affine import Affine

    rows, cols, gt = _glt(p, root, loc)
    nd, nc = src.shape[0], src.shape[1]
    if rows.max() >= nd or cols.max() >= nc:
        raise InputError(f"{p}: the GLT names swath pixels beyond its {nd} x {nc} extent")
    if flagged is not None:  # a flagged swath pixel fills no ortho pixel
        hit = (rows >= 0) & flagged[np.maximum(rows, 0), np.maximum(cols, 0)]
        rows, cols = np.where(hit, -1, rows), np.where(hit, -1, cols)
    side = _side(chunks, band_index.size)
    ny, nx = rows.shape
    nb = band_index.size
    var = src.variable  # lazily indexed from the file, not dask: each task reads its own window
    from dask.base import tokenize

    token = tokenize(str(p), os.path.getmtime(p), band_index, side)
    blocks = []
    for i in range(0, ny, side):
        row = []
        for j in range(0, nx, side):
            r, c = rows[i:i + side, j:j + side], cols[i:i + side, j:j + side]
            task = dask.delayed(_ortho_block)(var, r, c, band_index,
                                              dask_key_name=f"emit-ortho-{token}-{i}-{j}")
            row.append(da.from_delayed(task, shape=(nb, *r.shape), dtype=np.float32))
        blocks.append(row)
    data = da.block([[b for b in row] for row in blocks]) if blocks else da.zeros((nb, 0, 0))
    x = gt[0] + (np.arange(nx) + 0.5) * gt[1]
    y = gt[3] + (np.arange(ny) + 0.5) * gt[5]
    cube = xr.DataArray(data, dims=("band", "y", "x"),
                        coords={"band": band_index + 1, "y": y, "x": x},
                        attrs={"_band_index": band_index, "geometry": "orthorectified (GLT)"})
    cube.y.attrs.update(units="degrees_north", standard_name="latitude")
    cube.x.attrs.update(units="degrees_east", standard_name="longitude")
    crs = root.attrs.get("spatial_ref") or "EPSG:4326"
    return cube.rio.write_crs(crs).rio.write_transform(Affine.from_gdal(*gt))


def _ortho_block(var: xr.Variable, rows: np.ndarray, cols: np.ndarray,
                 band_index: np.ndarray) -> np.ndarray:
    """One ortho block ``(bands, h, w)``: the swath pixels its GLT block names; NaN where none.

    Reads only the bounding window of the named swath pixels (``var`` is lazily indexed).
    """
    out = np.full((band_index.size, *rows.shape), np.nan, dtype=np.float32)
    ok = rows >= 0
    if not ok.any():
        return out
    r0, r1 = int(rows[ok].min()), int(rows[ok].max()) + 1
    c0, c1 = int(cols[ok].min()), int(cols[ok].max()) + 1
    window = np.asarray(var[r0:r1, c0:c1, :].values, dtype=np.float32)  # (h', w', B), fill -> NaN
    window = window[:, :, band_index]
    out[:, ok] = window[rows[ok] - r0, cols[ok] - c0, :].T
    return out
