"""``xr-unmix demo``: the bundled sample scene, end to end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .endmembers import read_endmembers, resample_spectra
from .io import open_abundance, open_cube, write
from .metrics import rmse


def sample_scene_dir() -> Path:
    """Folder of the sample scenes: ``xr_unmix/sample_scenes`` inside an installed wheel (scene A, its
    truth and the endmembers), or the checkout's ``sample_scenes`` (scenes A and B)."""
    here = Path(__file__).resolve().parent
    for cand in (here / "sample_scenes", here.parent / "sample_scenes"):
        if (cand / "endmembers.csv").exists() and (cand / "scene_a.tif").exists():
            return cand
    raise FileNotFoundError(f"sample scenes not found in {here / 'sample_scenes'} (an installed wheel "
                            "ships them) or beside the package; in a checkout run `make scenes`")


def open_truth(path: Path | str) -> xr.DataArray:
    """Open a truth abundance GeoTIFF (band descriptions = endmember names) as (endmember, y, x)."""
    t = open_cube(path)
    names = t.attrs.get("long_name")
    if isinstance(names, str):
        names = (names,)
    if not names or len(names) != t.sizes["band"]:
        raise ValueError(f"{path}: band descriptions must name the endmembers")
    return (t.drop_vars(["wavelength"], errors="ignore").rename(band="endmember")
            .assign_coords(endmember=np.array(names, dtype=object)))


def save_png(maps: list[tuple[str, xr.DataArray]], path: Path) -> Path:
    """Plot rows of ``(title, (endmember, y, x))`` abundance maps into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = maps[0][1].sizes["endmember"]
    fig, axes = plt.subplots(len(maps), n, figsize=(2.6 * n, 2.6 * len(maps)), squeeze=False)
    for r, (title, ab) in enumerate(maps):
        for c, name in enumerate(ab.endmember.values):
            ax = axes[r][c]
            im = ax.imshow(ab.sel(endmember=name).values, vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"{title}: {name}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.6, label="abundance")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(out: Path | str = "out", *, scene: str = "scene_a") -> dict[str, Any]:
    """Unmix ``sample_scenes/<scene>.tif`` with FCLS through the accessor; write COG, Zarr, PNG.

    Returns a dict with the output paths and the abundance RMSE against the scene's truth.
    """
    import xr_unmix  # noqa: F401  (accessor)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    src = sample_scene_dir()
    cube = open_cube(src / f"{scene}.tif", chunks=64)
    E = read_endmembers(src / "endmembers.csv")
    if E.sizes["band"] != cube.sizes["band"]:
        E = resample_spectra(E, cube)
    t0 = time.perf_counter()
    ab = cube.unmix.fcls(E)
    # one computation: the Zarr store, then the COG and the RMSE layers from it
    cog, zarr, qual, _ = write(ab, cog=out / f"{scene}_abundance.tif",
                               zarr=out / f"{scene}_abundance.zarr", quality=cube, endmembers=E,
                               overwrite=True)
    elapsed = time.perf_counter() - t0
    truth = open_truth(src / f"{scene}_truth.tif").sel(endmember=ab.endmember.values)
    ab_mem = open_abundance(zarr).compute()
    score = rmse(ab_mem, truth)
    png = save_png([("FCLS", ab_mem), ("truth", truth)], out / f"{scene}_abundance.png")
    print(f"scene      {src / (scene + '.tif')}  ({cube.sizes['band']} bands, "
          f"{cube.sizes['y']}x{cube.sizes['x']} px, CRS {cube.rio.crs})")
    print("method     FCLS (SUnSAL, lam=0, ANC+ASC) through cube.unmix.fcls")
    print(f"time       {elapsed:.2f} s to unmix and write COG, Zarr and quality layer (includes the "
          "first import of torch and the writers, typically most of it on a scene this small)")
    print(f"RMSE       {score:.4f} (abundance RMSE against the scene's truth)")
    print(f"COG        {cog}")
    print(f"Zarr       {zarr}")
    print(f"quality    {qual} (per-pixel reconstruction RMSE)")
    print(f"PNG        {png}")
    return {"rmse": score, "cog": cog, "zarr": zarr, "png": png, "quality": qual}
