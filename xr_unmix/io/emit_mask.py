"""EMIT L2A MASK: the cloud / cirrus / water / spacecraft flags of a granule, as a swath pixel mask.

Layout followed (EMIT L2A MASK V001, LP DAAC NetCDF-4, the companion of L2A RFL V001): root ``mask``
``(downtrack, crosstrack, bands)`` float32 on the same swath as the reflectance, ``_FillValue`` -9999;
``sensor_band_parameters/mask_bands`` names the bands: ``Cloud flag``, ``Cirrus flag``, ``Water flag``,
``Spacecraft Flag``, ``Dilated Cloud Flag``, ``AOD550``, ``H2O (g cm-2)``, ``Aggregate Flag``. The flags
are 1 (set) or 0. emit-sds's L2A mask code makes the aggregate flag from the five flags (water
included) and an AOD550 threshold. Bands are matched by name, case-insensitively (later versions spell
them ``Cloud Flag``, ..., and drop some).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError, ParameterError

PathLike = str | os.PathLike[str]

#: ``mask_flags`` keywords -> the band names of the MASK product (compared case-insensitively)
FLAGS = {"cloud": "cloud flag", "cirrus": "cirrus flag", "water": "water flag",
         "spacecraft": "spacecraft flag", "dilated_cloud": "dilated cloud flag",
         "aggregate": "aggregate flag"}


def flag_names(flags: str | Sequence[str]) -> list[str]:
    """The MASK band names (lower case) that ``flags`` selects: keywords of :data:`FLAGS` or band
    names (``"Cloud flag"``), one or a sequence."""
    items = [flags] if isinstance(flags, str) else list(flags)
    if not items:
        raise ParameterError("mask_flags must name at least one flag, e.g. 'aggregate' or "
                             "['cloud', 'cirrus']").about("mask_flags")
    out = []
    for f in items:
        key = str(f).strip().lower()
        name = FLAGS.get(key.replace(" ", "_"), key)
        if name not in FLAGS.values() and not name.endswith("flag"):
            raise ParameterError(f"unknown EMIT mask flag {f!r}; use one of {sorted(FLAGS)} or a "
                                 "band name of the MASK file").about("mask_flags")
        out.append(name)
    return out


def read_mask(path: PathLike, flags: str | Sequence[str], shape: tuple[int, int]) -> np.ndarray:
    """``(downtrack, crosstrack)`` bool: True where any selected flag of the MASK file is set.

    Parameters
    ----------
    path : an ``EMIT_L2A_MASK_*.nc`` file
    flags : keywords or band names (:func:`flag_names`)
    shape : the reflectance swath's ``(downtrack, crosstrack)``; the mask must match it

    Raises
    ------
    InputError
        The file is no EMIT L2A MASK, lacks a selected band, or is on another swath.
    """
    import xarray as xr

    from ._hdf import h5netcdf_engine

    p = Path(path)
    engine = h5netcdf_engine()
    try:
        root = xr.open_dataset(p, engine=engine)
        names = xr.open_dataset(p, engine=engine, group="sensor_band_parameters")["mask_bands"]
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{p} is not an EMIT L2A MASK file (a 'mask' variable and "
                         f"sensor_band_parameters/mask_bands): {exc}") from exc
    if "mask" not in root:
        raise InputError(f"{p} has no 'mask' variable; not an EMIT L2A MASK granule")
    bands = [str(n.decode() if isinstance(n, bytes) else n).strip().lower() for n in names.values]
    want = flag_names(flags)
    missing = [w for w in want if w not in bands]
    if missing:
        raise InputError(f"{p} has no mask band {missing}; its bands are {bands}")
    mask = root["mask"]
    if tuple(mask.shape[:2]) != tuple(shape):
        raise InputError(f"{p} is on a {mask.shape[0]} x {mask.shape[1]} swath but the reflectance "
                         f"is {shape[0]} x {shape[1]}: not the same granule")
    sel = np.asarray(mask.isel({mask.dims[2]: [bands.index(w) for w in want]}).values)
    return np.nan_to_num(sel, nan=0.0).max(axis=2) > 0.5
