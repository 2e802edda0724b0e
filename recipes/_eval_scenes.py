"""The scenes of the DEQ-Unmix evaluation protocol (``recipes/eval_deq.py``) and their TUNE / REPORT split.

Every scene is a dict: ``cube`` (DataArray (band, y, x), NaN at nodata), ``truth`` (ndarray (R, y, x),
the reference abundances), ``E`` (ndarray (bands, R), the reference endmembers) and ``what`` (one line).

- ``jasper``: Jasper Ridge (100 x 100 px, 198 bands, 4 endmembers) from ``../shared/data``; skipped with a
  printed reason when absent.
- ``sample_a``, ``sample_b``: the sample scenes (earthlib spectra, 117 bands, 4 endmembers, SNR 30 dB,
  nodata pixels), the upper-left 64 x 64 px of each.
- ``syn_*``: :func:`xr_unmix.simulate.simulate_scene`, 64 x 64 px (``size``), with 3-6 endmembers from the
  USGS 1995 library (``../shared/data``; 62 spectra >= 10 deg apart, every 2nd AVIRIS band outside the
  water-vapour windows: 87 bands) or earthlib (class medoids, or class bundles of the 6 spectra closest to
  the medoid; every 2nd band: 90 bands). Each scene's draws are fixed (its own seed), whatever the
  method seeds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: scenes settings are chosen on
TUNE = ("sample_a", "syn_usgs4_shade", "syn_earth4_bundle", "syn_usgs5_nopure")
#: scenes only reported, never used to choose a setting
REPORT = ("jasper", "sample_b", "syn_usgs3_holes", "syn_earth5_nopure", "syn_usgs6_var")

#: synthetic scenes: library, R, scene seed, simulate_scene options
SYNTHETIC: dict[str, tuple[str, int, int, dict[str, Any]]] = {
    "syn_usgs4_shade": ("usgs", 4, 101, dict(snr_db=30.0, brightness=(0.6, 1.2))),
    "syn_earth4_bundle": ("earthlib_bundle", 4, 102, dict(snr_db=25.0, nodata_fraction=0.05)),
    "syn_usgs5_nopure": ("usgs", 5, 103, dict(snr_db=35.0, max_abundance=0.75, variability=0.03)),
    "syn_usgs3_holes": ("usgs", 3, 201, dict(snr_db=40.0, brightness=(0.7, 1.1), nodata_fraction=0.08)),
    "syn_earth5_nopure": ("earthlib_bundle", 5, 202, dict(snr_db=20.0, max_abundance=0.8)),
    "syn_usgs6_var": ("usgs", 6, 203, dict(snr_db=30.0, variability=0.05, brightness=(0.5, 1.2),
                                           nodata_fraction=0.03)),
}
EARTHLIB_CLASSES = ("vegetation", "bare", "built", "npv", "burned")


def _usgs(R: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, None]:
    from xr_unmix.library import load_library

    lib = load_library("usgs")
    wl = lib.wavelength.values
    keep = (wl >= 400) & (wl <= 2450) & ~((wl > 1340) & (wl < 1460)) & ~((wl > 1790) & (wl < 1960))
    idx = np.flatnonzero(keep)[::2]
    cols = rng.choice(lib.sizes["endmember"], size=R, replace=False)
    return lib.values[idx][:, cols], wl[idx], None


def _earthlib_bundles(R: int, rng: np.random.Generator, k: int = 6) -> tuple[np.ndarray, np.ndarray,
                                                                             list[np.ndarray]]:
    """Class medoids (bands, R) and, per class, the ``k`` spectra closest to the medoid in angle."""
    from xr_unmix.library import load_library

    lib = load_library("earthlib")
    wl = lib.wavelength.values[::2]
    X = lib.values[::2]
    cls = lib["class"].values
    meds, bundles = [], []
    for name in EARTHLIB_CLASSES[:R]:
        S = X[:, cls == name]
        Sn = S / np.linalg.norm(S, axis=0)
        ang = np.arccos(np.clip(Sn.T @ Sn, -1, 1))
        order = np.argsort(ang[np.argmin(ang.sum(1))])  # from the medoid outwards
        meds.append(S[:, order[0]])
        bundles.append(S[:, order[:k]])
    return np.stack(meds, 1), wl, bundles


def synthetic(name: str, size: int = 64) -> dict[str, Any]:
    """Build the synthetic scene ``name`` (see :data:`SYNTHETIC`) at ``size x size`` px."""
    import xarray as xr

    from xr_unmix.simulate import simulate_scene

    source, R, sseed, opts = SYNTHETIC[name]
    rng = np.random.default_rng(sseed)
    E, wl, bundles = _usgs(R, rng) if source == "usgs" else _earthlib_bundles(R, rng)
    Eda = xr.DataArray(E, dims=("band", "endmember"),
                       coords={"wavelength": ("band", wl), "endmember": [f"em{r}" for r in range(R)]})
    sc = simulate_scene(Eda, (size, size), seed=rng, bundles=bundles, **opts)
    if bundles is not None:  # the reference spectra: the bundle means
        E = np.stack([b.mean(1) for b in bundles], 1)
    effects = ", ".join(f"{k}={v}" for k, v in opts.items())
    return dict(cube=sc.cube, truth=sc.abundances.values.astype(np.float64), E=E,
                what=f"{source}, R={R}, {size}x{size}x{E.shape[0]}, {effects}")


def sample(name: str, size: int = 64) -> dict[str, Any]:
    """Sample scene ``a`` or ``b`` (upper-left ``size x size`` px) with its truth and endmembers."""
    from xr_unmix.demo import open_truth, sample_scene_dir
    from xr_unmix.endmembers import read_endmembers
    from xr_unmix.io import open_cube

    d = sample_scene_dir()
    letter = name[-1]
    cube = open_cube(d / f"scene_{letter}.tif").isel(y=slice(0, size), x=slice(0, size)).load()
    truth = open_truth(d / f"scene_{letter}_truth.tif").isel(y=slice(0, size), x=slice(0, size))
    E = read_endmembers(d / "endmembers.csv").sel(endmember=list(truth.endmember.values))
    cube = cube.drop_vars([c for c in cube.coords if c not in ("band", "wavelength", "y", "x")])
    return dict(cube=cube, truth=np.asarray(truth.values, dtype=np.float64), E=np.asarray(E.values, float),
                what=f"sample scene {letter.upper()}, earthlib spectra, {size}x{size}x{cube.sizes['band']}")


def jasper() -> dict[str, Any]:
    """Jasper Ridge, whole (100 x 100 px, 198 bands); FileNotFoundError when the data are absent."""
    from xr_unmix.datasets import load_jasper_ridge

    cube, E, A = load_jasper_ridge()
    return dict(cube=cube, truth=np.asarray(A.values, dtype=np.float64), E=np.asarray(E.values, float),
                what="Jasper Ridge, AVIRIS, 100x100x198, R=4")


def load(name: str, size: int = 64) -> dict[str, Any]:
    """Any protocol scene by name."""
    if name == "jasper":
        return jasper()
    if name in ("sample_a", "sample_b"):
        return sample(name, size)
    if name in SYNTHETIC:
        return synthetic(name, size)
    raise KeyError(name)


def split_of(name: str) -> str:
    return "TUNE" if name in TUNE else "REPORT"
