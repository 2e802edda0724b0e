"""Build the small georeferenced sample scenes in this folder from real spectra shipped with ``earthlib``.

Run from anywhere (deterministic, seeded; about two seconds)::

    python sample_scenes/make_scenes.py            # writes next to this script
    python sample_scenes/make_scenes.py --out DIR

Outputs (see README.md in this folder):

- ``endmembers.csv``: ``wavelength`` (nm) then one column per endmember (reflectance, 0-1).
- ``scene_a.tif`` (100 x 100 px, EPSG:32633) and ``scene_b.tif`` (64 x 96 px, EPSG:32610): uint16
  reflectance x 10000, nodata 65535 (a handful of pixels), DEFLATE, tiled.
- ``scene_a_truth.tif``, ``scene_b_truth.tif``: float32 abundances, one band per endmember, band descriptions
  = endmember names, same CRS and transform.

Wavelength convention (readable with ``rioxarray.open_rasterio`` and plain rasterio):

- dataset tag ``wavelength``: comma-separated band centres in nm, band order (``cube.attrs["wavelength"]``);
  dataset tags ``wavelength_units = "nm"`` and ``fwhm`` (nm, same layout);
- band descriptions ``"<centre> nm"`` (``cube.attrs["long_name"]``);
- GDAL's standard per-band ``IMAGERY`` metadata ``CENTRAL_WAVELENGTH_UM`` / ``FWHM_UM`` (micrometres).

The script only needs numpy, scipy, pandas, rasterio and earthlib.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy.ndimage import gaussian_filter

#: endmember name -> (metadata column, accepted values) selecting earthlib library spectra
CLASSES: dict[str, tuple[str, tuple[str, ...]]] = {
    "green_vegetation": ("LEVEL_2", ("vegetation",)),
    "soil": ("LEVEL_3", ("soil",)),
    "npv": ("LEVEL_2", ("npv",)),
    "impervious": ("LEVEL_3", ("asphalt", "road", "sidewalk", "driveway")),
}
#: sensor: band centres every 15 nm from 400 to 2450 nm, Gaussian response of 15 nm FWHM
SENSOR_START, SENSOR_STOP, SENSOR_STEP, SENSOR_FWHM = 400.0, 2450.0, 15.0, 15.0
#: water-vapour absorption windows dropped from the sensor grid (nm, inclusive)
WATER_BANDS = ((1340.0, 1460.0), (1790.0, 1960.0))
SCALE = 10000  # stored reflectance factor
NODATA = 65535
SNR_DB = 30.0

SCENES = {
    # name: (rows, cols, seed, EPSG, upper-left easting, northing, number of nodata pixels)
    "scene_a": (100, 100, 20260501, 32633, 402_000.0, 4_650_000.0, 7),
    "scene_b": (64, 96, 20260502, 32610, 551_010.0, 4_182_990.0, 5),
}
PIXEL_SIZE = 30.0  # metres


def load_library() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """earthlib's optimized spectral library.

    Returns
    -------
    metadata : DataFrame, one row per spectrum (``NAME``, ``LEVEL_1..3``, ``SOURCE``, ...)
    spectra : ndarray, shape (n_spectra, n_wavelengths), reflectance (0-1)
    wavelength : ndarray, shape (n_wavelengths,), nm
    """
    import earthlib.config as ec

    meta = pd.read_csv(ec.metadata_path)
    hdr = Path(ec.header_path).read_text()
    field = lambda key: re.search(rf"^{key}\s*=\s*(.+)$", hdr, re.M | re.I).group(1).strip()  # noqa: E731
    samples, lines = int(field("samples")), int(field("lines"))
    assert int(field("data type")) == 4 and int(field("byte order")) == 0, "expected little-endian float32"
    wl = np.array([float(v) for v in re.search(r"wavelength\s*=\s*\{([^}]*)\}", hdr).group(1).split(",")])
    if "micro" in field("wavelength units").lower():
        wl = wl * 1000.0
    spectra = np.fromfile(ec.endmember_path, dtype="<f4").reshape(lines, samples).astype(np.float64)
    if len(meta) != lines:
        raise RuntimeError(f"earthlib metadata has {len(meta)} rows but the library {lines} spectra")
    return meta, spectra, wl


def sensor_grid() -> tuple[np.ndarray, np.ndarray]:
    """Band centres and FWHM (nm) of the simulated sensor, water-vapour windows removed."""
    c = np.arange(SENSOR_START, SENSOR_STOP + 1e-9, SENSOR_STEP)
    keep = np.ones(c.size, bool)
    for lo, hi in WATER_BANDS:
        keep &= ~((c >= lo) & (c <= hi))
    c = c[keep]
    return c, np.full(c.size, SENSOR_FWHM)


def resample(spectra: np.ndarray, wl: np.ndarray, centres: np.ndarray, fwhm: np.ndarray) -> np.ndarray:
    """Gaussian spectral response resampling of ``spectra`` (n, len(wl)) onto the sensor bands (n, len(centres)).

    Library samples missing inside the water windows simply do not contribute (weights renormalized).
    """
    sig = fwhm / (2 * np.sqrt(2 * np.log(2)))
    W = np.exp(-0.5 * ((wl[None, :] - centres[:, None]) / sig[:, None]) ** 2)
    W[W < 1e-3] = 0
    W /= W.sum(1, keepdims=True)
    return spectra @ W.T


def choose_endmembers(meta: pd.DataFrame, spectra: np.ndarray) -> tuple[list[str], np.ndarray, list[str]]:
    """The medoid (spectrum closest to the per-wavelength median) of each class in :data:`CLASSES`.

    Returns names, spectra (R, n_wavelengths) and the earthlib spectrum names used.
    """
    names, out, ids = [], [], []
    for name, (col, values) in CLASSES.items():
        sel = meta[col].isin(values).to_numpy()
        if not sel.any():
            raise RuntimeError(f"earthlib has no spectrum with {col} in {values}")
        d = spectra[sel]
        i = int(np.argmin(((d - np.median(d, 0)) ** 2).sum(1)))
        names.append(name)
        out.append(d[i])
        ids.append(str(meta.loc[sel, "NAME"].iloc[i]))
    return names, np.stack(out), ids


def abundances(rows: int, cols: int, R: int, rng: np.random.Generator) -> np.ndarray:
    """Spatially smooth abundances (R, rows, cols): non-negative, summing to one, with near-pure patches.

    Smoothed Gaussian fields (sigma = 7 px) pushed through a sharp softmax: each endmember dominates some
    areas (abundance > 0.9) and mixes with its neighbours across soft boundaries.
    """
    f = np.stack([gaussian_filter(rng.normal(size=(rows, cols)), 7.0, mode="reflect") for _ in range(R)])
    f = (f - f.mean()) / f.std()
    a = np.exp(4.0 * f)
    return a / a.sum(0, keepdims=True)


def write_scene(path: Path, cube: np.ndarray, crs: CRS, transform: rasterio.Affine,
                centres: np.ndarray, fwhm: np.ndarray) -> None:
    """Write a uint16 (band, y, x) cube with the wavelength convention of the module docstring."""
    profile = dict(driver="GTiff", width=cube.shape[2], height=cube.shape[1], count=cube.shape[0],
                   dtype="uint16", crs=crs, transform=transform, nodata=NODATA, compress="deflate",
                   predictor=2, tiled=True, blockxsize=32, blockysize=32, interleave="pixel")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(cube)
        # GDAL's band scale: readers that decode it (rioxarray's mask_and_scale, xr_unmix.open_cube,
        # QGIS) see reflectance 0-1; the tag reflectance_scale says the same for humans
        dst.scales = (1 / SCALE,) * cube.shape[0]
        dst.offsets = (0.0,) * cube.shape[0]
        dst.update_tags(wavelength=",".join(f"{c:g}" for c in centres), wavelength_units="nm",
                        fwhm=",".join(f"{w:g}" for w in fwhm), reflectance_scale=str(1 / SCALE),
                        source="xr_unmix sample_scenes/make_scenes.py; spectra from earthlib (MIT)")
        for i, (c, w) in enumerate(zip(centres, fwhm), start=1):
            dst.set_band_description(i, f"{c:g} nm")
            dst.update_tags(i, ns="IMAGERY", CENTRAL_WAVELENGTH_UM=f"{c / 1000:g}", FWHM_UM=f"{w / 1000:g}")


def write_truth(path: Path, A: np.ndarray, names: list[str], crs: CRS, transform: rasterio.Affine) -> None:
    """Write float32 abundances (R, y, x), band descriptions = endmember names."""
    profile = dict(driver="GTiff", width=A.shape[2], height=A.shape[1], count=A.shape[0], dtype="float32",
                   crs=crs, transform=transform, compress="deflate", predictor=3, tiled=True,
                   blockxsize=32, blockysize=32)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(A.astype(np.float32))
        dst.update_tags(endmembers=",".join(names), units="abundance fraction (sums to one)")
        for i, n in enumerate(names, start=1):
            dst.set_band_description(i, n)


def make(out: Path) -> None:
    """Build every file; prints a short summary."""
    out.mkdir(parents=True, exist_ok=True)
    meta, lib, wl = load_library()
    centres, fwhm = sensor_grid()
    names, em_lib, ids = choose_endmembers(meta, lib)
    E = resample(em_lib, wl, centres, fwhm).T  # (bands, R)
    pd.DataFrame({"wavelength": centres, **{n: np.round(E[:, i], 6) for i, n in enumerate(names)}}).to_csv(
        out / "endmembers.csv", index=False, float_format="%.6g")
    print(f"{len(centres)} bands {centres[0]:g}-{centres[-1]:g} nm; endmembers "
          + ", ".join(f"{n} = earthlib {i}" for n, i in zip(names, ids)))
    for name, (rows, cols, seed, epsg, x0, y0, n_bad) in SCENES.items():
        rng = np.random.default_rng(seed)
        A = abundances(rows, cols, len(names), rng)
        clean = np.einsum("br,ryx->byx", E, A)
        sigma = np.sqrt(np.mean(clean**2) / 10 ** (SNR_DB / 10))
        noisy = clean + rng.normal(0.0, sigma, clean.shape)
        cube = np.clip(np.round(noisy * SCALE), 0, NODATA - 1).astype(np.uint16)
        flat = rng.choice(rows * cols, n_bad, replace=False)
        cube[:, flat // cols, flat % cols] = NODATA
        crs, transform = CRS.from_epsg(epsg), from_origin(x0, y0, PIXEL_SIZE, PIXEL_SIZE)
        write_scene(out / f"{name}.tif", cube, crs, transform, centres, fwhm)
        write_truth(out / f"{name}_truth.tif", A, names, crs, transform)
        pure = (A.max(0) > 0.9).mean()
        print(f"{name}: {rows}x{cols} px, EPSG:{epsg}, noise sigma {sigma:.4f} (SNR {SNR_DB:g} dB), "
              f"{n_bad} nodata px, {pure:.0%} px with an abundance > 0.9")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    make(p.parse_args().out)


if __name__ == "__main__":
    main()
