"""Readers for the public benchmark data the recipes and tests use (never shipped with the package).

The data live outside the repository (``../shared/data`` beside a checkout, or ``$XR_UNMIX_DATA``);
functions raise :class:`FileNotFoundError` naming the folder they looked in when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from ._units import to_nm

_HERE = Path(__file__).resolve().parent


def data_root() -> Path:
    """The folder holding ``jasper_ridge/`` and ``usgs_library/``.

    ``$XR_UNMIX_DATA`` when set, else ``shared/data`` beside the repository checkout.
    """
    env = os.environ.get("XR_UNMIX_DATA")
    if env:
        return Path(env)
    return _HERE.parent.parent / "shared" / "data"


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: set XR_UNMIX_DATA to the folder holding jasper_ridge/ and usgs_library/"
        )
    return path


def load_jasper_ridge(root: str | os.PathLike[str] | None = None) -> tuple[xr.DataArray, xr.DataArray,
                                                                            xr.DataArray]:
    """Jasper Ridge (AVIRIS, 100 x 100 px, 198 bands) with its reference endmembers and abundances.

    Returns
    -------
    cube : DataArray (band, y, x), float32 reflectance (``Y / 5000``), ``wavelength`` coordinate in nm
        (not monotonic: the AVIRIS spectrometers overlap). No CRS (the published crop has none).
    endmembers : DataArray (band, endmember), names ``tree, water, soil, road``.
    abundances : DataArray (endmember, y, x), the reference labelling (sums to one).
    """
    import scipy.io

    folder = _require(Path(root) if root else data_root() / "jasper_ridge")
    m = scipy.io.loadmat(_require(folder / "jasperRidge2_R198.mat"))
    gt = scipy.io.loadmat(_require(folder / "end4.mat"))
    wl = np.loadtxt(folder / "wavelengths.csv", delimiter=",", skiprows=1)[:, 2]
    nrow, ncol = int(m["nRow"].squeeze()), int(m["nCol"].squeeze())
    Y = m["Y"].astype(np.float64) / float(m["maxValue"].squeeze())
    cube = Y.reshape(Y.shape[0], nrow, ncol, order="F").astype(np.float32)
    names = ["tree", "water", "soil", "road"]
    band = np.arange(1, Y.shape[0] + 1)
    cube_da = xr.DataArray(
        cube,
        dims=("band", "y", "x"),
        coords={"band": band, "wavelength": ("band", wl), "y": np.arange(nrow), "x": np.arange(ncol)},
        name="reflectance",
    )
    E = xr.DataArray(
        gt["M"].astype(np.float64),
        dims=("band", "endmember"),
        coords={"band": band, "wavelength": ("band", wl), "endmember": np.array(names, dtype=object)},
        name="endmembers",
    )
    A = xr.DataArray(
        gt["A"].reshape(len(names), nrow, ncol, order="F"),
        dims=("endmember", "y", "x"),
        coords={"endmember": np.array(names, dtype=object), "y": np.arange(nrow), "x": np.arange(ncol)},
        name="abundance",
    )
    return cube_da, E, A


def load_usgs_library(which: str = "pruned_10_deg",
                      root: str | os.PathLike[str] | None = None) -> xr.DataArray:
    """The USGS 1995 spectral library resampled to the 224 AVIRIS channels.

    Parameters
    ----------
    which : {"pruned_10_deg", "pruned_3_deg", "full"}
        The 62-spectrum (>= 10 deg apart), 342-spectrum (>= 3 deg) or full 498-spectrum library.

    Returns
    -------
    DataArray (band, endmember), reflectance, sorted by wavelength, ``wavelength`` coordinate in nm,
    endmember names from the file.
    """
    import scipy.io

    folder = _require(Path(root) if root else data_root() / "usgs_library")
    full = scipy.io.loadmat(_require(folder / "USGS_1995_Library.mat"))
    order = np.argsort(full["datalib"][:, 0], kind="stable")
    wl_nm = to_nm(full["datalib"][order, 0], "um")  # the library stores micrometres

    def _names(raw: np.ndarray) -> list[str]:
        return [bytes(r).decode("latin1").rstrip() for r in raw]

    if which == "full":
        spectra = full["datalib"][order, 3:]
        names = _names(full["names"][3:])
    elif which == "pruned_10_deg":
        d = scipy.io.loadmat(_require(folder / "USGS_pruned_10_deg.mat"))
        spectra, names = d["datalib"], _names(d["names"])
    elif which == "pruned_3_deg":
        d = scipy.io.loadmat(_require(folder / "USGS_pruned_3_deg.mat"))
        spectra, names = d["B"], _names(d["names_B"])
    else:
        raise ValueError(f"unknown library {which!r}: use 'pruned_10_deg', 'pruned_3_deg' or 'full'")
    return xr.DataArray(
        spectra.astype(np.float64),
        dims=("band", "endmember"),
        coords={"band": np.arange(1, spectra.shape[0] + 1), "wavelength": ("band", wl_nm),
                "endmember": np.array(names, dtype=object)},
        name="library",
    )
