"""Bundle unmixing speed: px/s of ``cube.unmix.bundles`` against a plain per-pixel loop and against a
single-draw FCLS, from one run.

    python recipes/bench_bundles.py [--size 128] [--n-mc 20] [--loop-pixels 200]

The scene: ``size`` x ``size`` px mixing earthlib spectra (vegetation, bare, npv; 60 bands outside the
water-vapour gaps), or synthetic bundles when earthlib is missing. Prints the thread settings and the
load average: on a shared machine the figures move with the other jobs.

- ``bundles``: the vectorised implementation (one batched FCLS per draw over the whole cube);
- ``fcls x1``: one FCLS over the cube with one endmember set (the cost floor of one draw);
- ``loop``: the same draws, pixel by pixel, each pixel solved by scipy's NNLS with the sum-to-one
  row appended (weight 1e3; what a hand-written loop does), on ``loop-pixels`` pixels, extrapolated.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import xr_unmix
from xr_unmix.bundles import class_even_draws
from xr_unmix.testing import make_cube, make_endmembers


def scene(size: int, seed: int = 0):
    wl = np.concatenate([np.linspace(420, 1340, 30), np.linspace(1470, 1780, 12),
                         np.linspace(1970, 2430, 18)])
    try:
        from xr_unmix.library import load_library

        lib = load_library("earthlib")
        keep = ["vegetation", "bare", "npv"]
        lib = lib.isel(endmember=np.flatnonzero(np.isin(lib["class"].values, keep)))
        on = xr_unmix.resample_spectra(lib, wl)
    except ImportError:
        E = make_endmembers(wl.size, 30, seed=1)
        on = E.assign_coords({"class": ("endmember", np.repeat(["a", "b", "c"], 10)),
                              "wavelength": ("band", wl)})
        lib, keep = on, ["a", "b", "c"]
    rng = np.random.default_rng(seed)
    n = size * size
    A = rng.dirichlet(np.ones(3), size=n).T
    Y = sum(on.values[:, rng.choice(np.flatnonzero(on["class"].values == c), n)] * A[i]
            for i, c in enumerate(keep))
    cube, _, _ = make_cube(size, size, endmembers=make_endmembers(wl.size))
    cube = cube.copy(data=Y.reshape(-1, size, size).astype(np.float32)).assign_coords(
        wavelength=("band", wl))
    return cube, lib, on, keep


def loop_rate(cube, on, keep, n_mc: int, k: int, n_px: int) -> float:
    from scipy.optimize import nnls

    cls = np.array([keep.index(c) for c in on["class"].values])
    draws = class_even_draws(cls, len(keep), n_mc, k, 0)
    Y = cube.values.reshape(cube.sizes["band"], -1)[:, :n_px].astype(np.float64)
    S = on.values
    t = time.perf_counter()
    for j in range(n_px):
        y = np.r_[Y[:, j], 1e3]
        for cols in draws:
            nnls(np.vstack([S[:, cols], 1e3 * np.ones(len(cols))]), y)
    return n_px / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--n-mc", type=int, default=20)
    ap.add_argument("--max-endmembers", type=int, default=3)
    ap.add_argument("--loop-pixels", type=int, default=200)
    a = ap.parse_args()
    import torch

    print(f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, cpus {os.cpu_count()}; load average "
          f"{os.getloadavg()[0]:.2f} (machine shared with other jobs)")
    cube, lib, on, keep = scene(a.size)
    n = a.size * a.size
    print(f"scene {a.size}x{a.size} px, {cube.sizes['band']} bands, library "
          f"{lib.sizes['endmember']} spectra in {len(keep)} classes; n_mc={a.n_mc}, "
          f"max_endmembers={a.max_endmembers}")
    cube.unmix.bundles(lib, n_mc=1, classes=keep)  # warm-up (imports, torch)
    t = time.perf_counter()
    cube.unmix.bundles(lib, n_mc=a.n_mc, max_endmembers=a.max_endmembers, classes=keep)
    t_b = time.perf_counter() - t
    one = on.isel(endmember=[list(on["class"].values).index(c) for c in keep])
    t = time.perf_counter()
    _ = cube.unmix.fcls(one).values
    t_f = time.perf_counter() - t
    r_loop = loop_rate(cube, on, keep, a.n_mc, a.max_endmembers, a.loop_pixels)
    print(f"bundles (vectorised): {n / t_b:10.0f} px/s  ({t_b:.2f} s)")
    print(f"fcls x1 (one draw):   {n / t_f:10.0f} px/s  -> bundles costs {t_b / t_f:.1f} single "
          f"FCLS solves for {a.n_mc} draws")
    print(f"per-pixel loop:       {r_loop:10.0f} px/s  (scipy nnls, {a.loop_pixels} px) -> "
          f"vectorised is {n / t_b / r_loop:.0f}x faster")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
