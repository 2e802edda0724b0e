"""Label endmembers with their closest spectra in a reference library (USGS 1995, earthlib).

A library is a DataArray ``(band, endmember)`` with a ``wavelength`` coordinate in nm. Before comparing,
the library is resampled onto the endmembers' wavelengths by linear interpolation; target wavelengths
outside the library's range, or inside a gap of the library's sampling (earthlib drops the water-vapour
bands 1350-1460 nm and 1790-1960 nm), are left out of the spectral angle, band by band. The
interpolation itself is :func:`xr_unmix.resample_spectra`.

The libraries are loaded on first use (earthlib imports pandas and reads its 7261-spectrum library at
import, so ``import xr_unmix.library`` does not import it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from ._units import to_nm, wavelength_unit

__all__ = ["LIBRARIES", "identify", "label_endmembers", "load_library"]

#: Names accepted by :func:`load_library`.
LIBRARIES = ("usgs", "usgs_3deg", "usgs_full", "earthlib", "earthlib_full")


def load_library(name: str = "usgs") -> xr.DataArray:
    """Load a reference spectral library.

    Parameters
    ----------
    name : str
        ``"usgs"`` (USGS 1995, AVIRIS-resampled, 62 spectra >= 10 deg apart), ``"usgs_3deg"``
        (342 spectra >= 3 deg apart), ``"usgs_full"`` (498 spectra), all via
        :func:`xr_unmix.datasets.load_usgs_library` (minerals plus a few plants); ``"earthlib"``
        (earthlib's 313-spectrum optimised library: soils, vegetation, non-photosynthetic vegetation,
        built materials, burned surfaces) or ``"earthlib_full"`` (7261 spectra), 400-2450 nm at
        10 nm, water-vapour bands removed.

    Returns
    -------
    DataArray (band, endmember), reflectance (0-1), ``wavelength`` coordinate in nm. Earthlib spectra
    carry a ``material`` coordinate ``"LEVEL_2/LEVEL_3"`` (e.g. ``"bare/soil"``) and a ``class``
    coordinate (``LEVEL_2``: ``bare``, ``built``, ``burned``, ``npv``, ``vegetation``), ready for
    :func:`xr_unmix.bundles.bundles`; USGS ones carry their name as material.
    """
    if name in ("usgs", "usgs_3deg", "usgs_full"):
        from .datasets import load_usgs_library

        which = {"usgs": "pruned_10_deg", "usgs_3deg": "pruned_3_deg", "usgs_full": "full"}[name]
        lib = load_usgs_library(which)
        return lib.assign_coords(material=("endmember", np.array(lib.endmember.values, dtype=object)))
    if name in ("earthlib", "earthlib_full"):
        try:
            import earthlib
        except ImportError as exc:
            raise ModuleNotFoundError(f"library {name!r} needs earthlib: pip install "
                                      "'xr-unmix[scenes]'", name="earthlib") from exc

        spectra = earthlib.library if name == "earthlib" else earthlib.full_library
        wl = np.asarray(spectra.sensor.band_centers, dtype=np.float64)
        if wavelength_unit(str(spectra.sensor.wavelength_unit)) == "um":
            wl = np.round(to_nm(wl, "um"), 4)  # float32 micrometres: 0.4 -> 400.0000060
        from .endmembers import _unique_names  # earthlib repeats names ('ash', 'difubr')

        names = np.array(_unique_names([str(n) for n in spectra.names]), dtype=object)
        meta = spectra.metadata
        material = (np.array([f"{a}/{b}" for a, b in zip(meta["LEVEL_2"], meta["LEVEL_3"], strict=True)],
                             dtype=object) if meta is not None else names)
        coords_extra = {"material": ("endmember", material)}
        if meta is not None:  # earthlib's five classes: bare, built, burned, npv, vegetation
            coords_extra["class"] = ("endmember", np.array([str(a) for a in meta["LEVEL_2"]],
                                                           dtype=object))
        return xr.DataArray(
            np.asarray(spectra.data, dtype=np.float64).T,
            dims=("band", "endmember"),
            coords={"band": np.arange(1, wl.size + 1), "wavelength": ("band", wl),
                    "endmember": names, **coords_extra},
            name=f"library_{name}",
        )
    raise ValueError(f"unknown library {name!r}: use one of {LIBRARIES}")


def _uncovered(src_wl: np.ndarray, dst_wl: np.ndarray, max_gap: float | None = None) -> np.ndarray:
    """Which target wavelengths a library sampled at ``src_wl`` does not cover, ``(n_dst,)`` bool.

    A target is uncovered outside ``[min(src_wl), max(src_wl)]`` or strictly inside a gap between two
    source samples more than ``max_gap`` nm apart (default: 3 x the median source spacing), e.g.
    earthlib's removed water-vapour bands: interpolating across those would invent a spectrum.
    """
    wl_u = np.unique(np.asarray(src_wl, dtype=np.float64))
    dst_wl = np.asarray(dst_wl, dtype=np.float64)
    if wl_u.size < 2:
        raise ValueError("the library needs at least two distinct wavelengths")
    steps = np.diff(wl_u)
    if max_gap is None:
        max_gap = 3.0 * float(np.median(steps))
    k = np.clip(np.searchsorted(wl_u, dst_wl), 1, wl_u.size - 1)
    in_gap = (steps[k - 1] > max_gap) & (dst_wl > wl_u[k - 1]) & (dst_wl < wl_u[k])
    return (dst_wl < wl_u[0]) | (dst_wl > wl_u[-1]) | in_gap


def _resample(library: xr.DataArray, wavelengths: np.ndarray) -> np.ndarray:
    """The library on ``wavelengths`` (nm), ``(n_bands, n_lib)``: linear interpolation by
    :func:`xr_unmix.resample_spectra` where the library covers the wavelength, NaN elsewhere."""
    from .endmembers import resample_spectra

    if "wavelength" not in library.coords:
        raise ValueError("the library needs a 'wavelength' coordinate (nm) along 'band'")
    lib = library.transpose("band", "endmember")
    lw = np.asarray(lib.coords["wavelength"].values, dtype=np.float64)
    if lw.max() < wavelengths.min() or lw.min() > wavelengths.max():
        raise ValueError(f"the library covers {lw.min():.0f}-{lw.max():.0f} nm and the endmembers "
                         f"{wavelengths.min():.0f}-{wavelengths.max():.0f} nm: no overlap")
    # plain positional names: library names need not be unique (earthlib repeats a few)
    lib = xr.DataArray(lib.values, dims=("band", "endmember"),
                       coords={"wavelength": ("band", lw),
                               "endmember": [f"s{i}" for i in range(lib.sizes["endmember"])]})
    out = np.full((wavelengths.size, lib.sizes["endmember"]), np.nan)
    cov = ~_uncovered(lw, wavelengths)
    if cov.any():
        out[cov] = resample_spectra(lib, wavelengths[cov]).values
    return out


def _wavelengths_of(endmembers: xr.DataArray, wavelengths: Any) -> np.ndarray:
    if wavelengths is not None:
        wl = np.asarray(wavelengths.values if isinstance(wavelengths, xr.DataArray) else wavelengths,
                        dtype=np.float64)
    elif "wavelength" in endmembers.coords:
        wl = np.asarray(endmembers.coords["wavelength"].values, dtype=np.float64)
    else:
        raise ValueError("the endmembers have no 'wavelength' coordinate: pass wavelengths= (nm)")
    if wl.shape != (endmembers.sizes["band"],):
        raise ValueError(f"{wl.size} wavelengths for {endmembers.sizes['band']} bands")
    return wl


def _angles(E: np.ndarray, Lib: np.ndarray, min_bands: int) -> tuple[np.ndarray, np.ndarray]:
    """Spectral angles ``(n_end, n_lib)`` over the bands where both are finite, and band counts."""
    ok = np.isfinite(Lib)  # (bands, n_lib); endmembers are finite
    Lz = np.where(ok, Lib, 0.0)
    num = E.T @ Lz
    ne = np.sqrt((E**2).T @ ok.astype(np.float64))  # endmember norm over each library's bands
    nl = np.sqrt((Lz**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        ang = np.arccos(np.clip(num / (ne * nl[None, :]), -1.0, 1.0))
    used = ok.sum(axis=0)
    ang[:, used < min_bands] = np.nan
    return ang, used


def identify(
    endmembers: xr.DataArray,
    library: str | xr.DataArray | Sequence[str | xr.DataArray] = ("usgs", "earthlib"),
    *,
    k: int = 3,
    wavelengths: Any = None,
    min_bands: int = 10,
) -> xr.Dataset:
    """The ``k`` library spectra closest (smallest spectral angle) to each endmember.

    Parameters
    ----------
    endmembers : DataArray (band, endmember)
        With a ``wavelength`` coordinate in nm along ``band`` (or pass ``wavelengths``); e.g. the
        output of :func:`xr_unmix.extraction.extract_endmembers`.
    library : str, DataArray, or a sequence of them
        Library names for :func:`load_library`, or DataArrays ``(band, endmember)`` with a
        ``wavelength`` coordinate (nm). Several libraries are searched together.
    k : int
        Matches kept per endmember.
    wavelengths : array (bands,), optional
        The endmembers' wavelengths in nm, when they carry no coordinate.
    min_bands : int
        Library spectra sharing fewer finite bands with the endmembers are skipped.

    Returns
    -------
    Dataset with dims ``(endmember, rank)``: ``name`` (library spectrum), ``material`` (its class),
    ``library`` (which library), ``sad`` (radians, over the shared bands) and ``n_bands`` (bands
    compared). Rank 0 is the best match.
    """
    from ._cube import as_endmembers

    E_da = as_endmembers(endmembers)
    wl = _wavelengths_of(E_da, wavelengths)
    E = E_da.values
    libs = [library] if isinstance(library, str | xr.DataArray) else list(library)
    if not libs:
        raise ValueError("no library given")
    names, materials, sources, blocks = [], [], [], []
    for lib in libs:
        da = load_library(lib) if isinstance(lib, str) else lib
        tag = lib if isinstance(lib, str) else str(da.name or "library")
        blocks.append(_resample(da, wl))
        nm = [str(n) for n in da.coords["endmember"].values]
        names += nm
        materials += ([str(m) for m in da.coords["material"].values] if "material" in da.coords
                      else nm)
        sources += [tag] * len(nm)
    Lib = np.concatenate(blocks, axis=1)
    ang, used = _angles(E, Lib, min_bands)
    k = int(min(k, Lib.shape[1]))
    order = np.argsort(np.where(np.isnan(ang), np.inf, ang), axis=1, kind="stable")[:, :k]
    pick = lambda arr: np.array(arr, dtype=object)[order]  # noqa: E731
    return xr.Dataset(
        {"name": (("endmember", "rank"), pick(names)),
         "material": (("endmember", "rank"), pick(materials)),
         "library": (("endmember", "rank"), pick(sources)),
         "sad": (("endmember", "rank"), np.take_along_axis(ang, order, axis=1)),
         "n_bands": (("endmember", "rank"), used[order])},
        coords={"endmember": E_da.endmember.values, "rank": np.arange(k)},
    )


def label_endmembers(
    endmembers: xr.DataArray,
    library: str | xr.DataArray | Sequence[str | xr.DataArray] = ("usgs", "earthlib"),
    **kwargs: Any,
) -> xr.DataArray:
    """Return ``endmembers`` with coordinates naming the closest library spectrum of each.

    Adds ``label`` (library spectrum name), ``label_material``, ``label_library`` and ``label_sad``
    (radians) along ``endmember``; see :func:`identify` for the parameters.
    """
    best = identify(endmembers, library, k=1, **kwargs).isel(rank=0)
    out = endmembers.transpose("band", "endmember")
    return out.assign_coords(
        label=("endmember", best["name"].values),
        label_material=("endmember", best["material"].values),
        label_library=("endmember", best["library"].values),
        label_sad=("endmember", best["sad"].values.astype(np.float64)),
    )
