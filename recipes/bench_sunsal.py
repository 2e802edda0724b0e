"""Benchmark xr_unmix's SUnSAL (FCLS case) against two plain references, on one synthetic cube.

    .venv/bin/python recipes/bench_sunsal.py                 # 512 x 512 px, 200 bands, 5 endmembers, 30 dB
    .venv/bin/python recipes/bench_sunsal.py --threads 1 --size 256 --nnls-pixels 4096

Prints, for every method: pixels/s (best of ``--repeat`` runs), peak memory (largest RSS increase over the
process's RSS before the call, sampled every 2 ms), and the largest absolute deviation from the exact FCLS
answer (support enumeration, float64). Methods:

- ``scipy nnls / pixel``: per-pixel ``scipy.optimize.nnls`` on the sum-to-one augmented system
  ``[E; delta 1^T] x = [y; delta]`` (delta = 1e4), on a random subsample of ``--nnls-pixels`` pixels;
- ``numpy ADMM x100``: a straightforward vectorized numpy (float64) ADMM for FCLS, 100 iterations,
  ``mu = 0.01 ||E||_2^2`` (the SUnSAL reference default on the normalized problem);
- ``xr_unmix fcls numpy-in ... t=T``: ``cube.unmix.fcls(E, dtype=...)`` on an in-memory cube with
  ``torch.set_num_threads(T)`` (T = 1 and ``--threads``; with T > 1 ``sunsal_solve`` runs its pixel
  batches on T threads of one torch thread each);
- ``solvers.fcls(Y, E)``: the solver alone on the ``(bands, n)`` float32 array (no xarray, no cast of
  the cube, no NaN masking), to show what the accessor adds;
- ``xr_unmix fcls dask-in``: the same on a dask-backed cube (``--chunk`` rows per chunk), computed with the
  threaded scheduler, ``--threads`` workers with one torch thread each.

Thread settings are fixed before numpy/torch are imported and printed: BLAS (OpenBLAS/MKL/OMP) uses one
thread (the references make no use of more: their products are 5 x 5 by 5 x n); torch's thread count is
set per row and printed in its name. The exact answer, synthetic endmembers (earthlib spectra
interpolated to ``--bands`` bands over 400-2450 nm) and abundances (Dirichlet(1)) are seeded.
"""

from __future__ import annotations

import argparse
import os
import sys

_p = argparse.ArgumentParser(description="SUnSAL/FCLS benchmark")
_p.add_argument("--size", type=int, default=512, help="cube is size x size pixels")
_p.add_argument("--bands", type=int, default=200)
_p.add_argument("--endmembers", type=int, default=5, choices=range(2, 8))
_p.add_argument("--snr", type=float, default=30.0, help="dB")
_p.add_argument("--threads", type=int, default=2, help="torch intra-op threads / dask workers")
_p.add_argument("--chunk", type=int, default=128, help="rows per dask chunk")
_p.add_argument("--nnls-pixels", type=int, default=16384, help="subsample for the per-pixel scipy reference")
_p.add_argument("--repeat", type=int, default=3)
_p.add_argument("--seed", type=int, default=0)
_p.add_argument("--library", action="store_true",
                help="the large-library case instead: USGS 1995 spectra (R = 62 and --lib-r), lam = --lam, "
                     "ANC+ASC (the accessor's default) and ANC only, against plain numpy ADMM at equal "
                     "accuracy (recipes/_bench_library.py)")
_p.add_argument("--lib-size", type=int, default=64, help="library case: cube is size x size pixels")
_p.add_argument("--lib-r", type=int, default=200, help="library case: spectra drawn from usgs_3deg")
_p.add_argument("--lam", type=float, default=1e-3, help="library case: l1 weight")
_p.add_argument("--admm-max", type=int, default=3000,
                help="library case: most iterations of the plain numpy ADMM (run until xr_unmix's accuracy)")
_p.add_argument("--admm-check", type=int, default=50, help="library case: ADMM iterations between checks")
ARGS = _p.parse_args()

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import itertools  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402

torch.set_num_threads(ARGS.threads)
import xr_unmix  # noqa: E402,F401  (registers .unmix)


def endmember_matrix(bands: int, R: int) -> tuple[np.ndarray, list[str]]:
    """(bands, R) reflectance: medoids of earthlib classes, interpolated onto 400-2450 nm."""
    import re

    import earthlib.config as ec
    import pandas as pd

    meta = pd.read_csv(ec.metadata_path)
    hdr = open(ec.header_path).read()
    wl = np.array([float(v) for v in re.search(r"wavelength\s*=\s*\{([^}]*)\}", hdr).group(1).split(",")])
    lib = np.fromfile(ec.endmember_path, dtype="<f4").reshape(len(meta), wl.size).astype(np.float64)
    classes = [("vegetation", "LEVEL_2"), ("soil", "LEVEL_3"), ("npv", "LEVEL_2"), ("road", "LEVEL_3"),
               ("paint", "LEVEL_3"), ("char", "LEVEL_3"), ("metal", "LEVEL_3")][:R]
    grid = np.linspace(400, 2450, bands) / 1000.0
    cols = []
    for value, col in classes:
        d = lib[(meta[col] == value).to_numpy()]
        s = d[np.argmin(((d - np.median(d, 0)) ** 2).sum(1))]
        cols.append(np.interp(grid, wl, s))
    return np.stack(cols, 1), [c[0] for c in classes]


def fcls_exact(Y: np.ndarray, E: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Exact FCLS (R, n), float64: over all 2^R - 1 supports, the feasible equality-constrained LS
    solution of least objective (the optimum is feasible for its own support, and no feasible point
    beats it)."""
    R = E.shape[1]
    G = E.T @ E
    out = np.empty((R, Y.shape[1]))
    systems = []
    for k in range(1, R + 1):
        for S in map(list, itertools.combinations(range(R), k)):
            K = np.zeros((k + 1, k + 1))
            K[:k, :k], K[:k, k], K[k, :k] = G[np.ix_(S, S)], 1.0, 1.0
            systems.append((S, np.linalg.inv(K)))
    for s0 in range(0, Y.shape[1], chunk):
        b = E.T @ Y[:, s0:s0 + chunk].astype(np.float64)
        n = b.shape[1]
        best = np.full(n, np.inf)
        bx = np.zeros((R, n))
        for S, Ki in systems:
            k = len(S)
            xs = Ki[:k, :k] @ b[S] + Ki[:k, k:k + 1]
            x = np.zeros((R, n))
            x[S] = xs
            f = 0.5 * np.einsum("in,in->n", x, G @ x) - np.einsum("in,in->n", b, x)
            ok = (xs >= -1e-12).all(0) & (f < best)
            best[ok], bx[:, ok] = f[ok], x[:, ok]
        out[:, s0:s0 + chunk] = np.clip(bx, 0, None)
    return out


def fcls_scipy(Y: np.ndarray, E: np.ndarray, delta: float = 1e4) -> np.ndarray:
    """Reference 1: per-pixel scipy NNLS on the augmented system, (R, n)."""
    from scipy.optimize import nnls

    Ea = np.vstack([E, delta * np.ones(E.shape[1])])
    out = np.empty((E.shape[1], Y.shape[1]))
    ya = np.empty(E.shape[0] + 1)
    ya[-1] = delta
    for i in range(Y.shape[1]):
        ya[:-1] = Y[:, i]
        out[:, i] = nnls(Ea, ya)[0]
    return out


def fcls_admm_numpy(Y: np.ndarray, E: np.ndarray, iters: int = 100) -> np.ndarray:
    """Reference 2: plain vectorized numpy ADMM for FCLS (float64), ``iters`` iterations, (R, n)."""
    R = E.shape[1]
    mu = 0.01 * np.linalg.norm(E, 2) ** 2
    IF = np.linalg.inv(E.T @ E + mu * np.eye(R))
    one = np.ones((R, 1))
    c = IF @ one / (one.T @ IF @ one)  # affine correction onto 1^T x = 1
    P = IF - c @ (one.T @ IF)
    PB = P @ (E.T @ Y) + c
    z = np.zeros((R, Y.shape[1]))
    d = np.zeros_like(z)
    for _ in range(iters):
        x = PB + mu * (P @ (z + d))
        z = np.maximum(x - d, 0)
        d -= x - z
    return z


class PeakRSS:
    """Largest RSS increase (bytes) over the value at entry, sampled every 2 ms in a thread."""

    def __enter__(self) -> PeakRSS:
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def run(name: str, fn: Callable[[], np.ndarray], n_pixels: int, exact: np.ndarray,
        repeat: int) -> dict[str, object]:
    best, peak, out = np.inf, 0.0, None
    for _ in range(repeat):
        with PeakRSS() as m:
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
        best, peak = min(best, dt), max(peak, m.mib)
    dev = float(np.nanmax(np.abs(np.asarray(out, dtype=np.float64) - exact)))
    row = dict(method=name, pixels=n_pixels, seconds=best, px_s=n_pixels / best, peak_mib=peak, max_dev=dev)
    print(f"{name:34s} {n_pixels:8d} {best:9.3f} {n_pixels / best:11.3g} {peak:9.1f} {dev:11.2e}", flush=True)
    return row


def main() -> None:
    a = ARGS
    print(f"# bench_sunsal: {a.size}x{a.size} px, {a.bands} bands, {a.endmembers} endmembers, SNR {a.snr:g} dB,"
          f" seed {a.seed}")
    print(f"# threads: numpy-in rows: torch threads t=1 and t={a.threads}; dask-in: {a.threads} "
          f"workers x 1 torch thread; OMP/OPENBLAS/MKL_NUM_THREADS="
          f"{os.environ['OMP_NUM_THREADS']}/{os.environ['OPENBLAS_NUM_THREADS']}/{os.environ['MKL_NUM_THREADS']}"
          f"; cpu_count={os.cpu_count()}")
    print(f"# python {sys.version.split()[0]}, numpy {np.__version__}, torch {torch.__version__}, "
          f"xarray {xr.__version__}; load average at start {os.getloadavg()[0]:.2f}")
    E, names = endmember_matrix(a.bands, a.endmembers)
    rng = np.random.default_rng(a.seed)
    n = a.size * a.size
    A = rng.dirichlet(np.ones(a.endmembers), n).T
    clean = E @ A
    sigma = np.sqrt(np.mean(clean**2) / 10 ** (a.snr / 10))
    Y = (clean + rng.normal(0, sigma, clean.shape)).astype(np.float32)  # (bands, n), the cube's data
    del clean
    cube = xr.DataArray(Y.reshape(a.bands, a.size, a.size), dims=("band", "y", "x"),
                        coords={"band": np.arange(1, a.bands + 1), "y": np.arange(a.size) * -30.0,
                                "x": np.arange(a.size) * 30.0}, name="reflectance")
    Eda = xr.DataArray(E.astype(np.float32), dims=("band", "endmember"), coords={"endmember": names})
    t0 = time.perf_counter()
    exact = fcls_exact(Y, E.astype(np.float32).astype(np.float64))
    print(f"# exact FCLS (support enumeration, float64) for all {n} px: {time.perf_counter() - t0:.2f} s; "
          f"abundance RMSE of the exact answer vs the simulated truth {np.sqrt(np.mean((exact - A) ** 2)):.4f}; "
          f"pixels with an active constraint {np.mean((exact == 0).any(0)):.1%}")
    E32 = Eda.values.astype(np.float64)
    sub = np.sort(rng.choice(n, min(a.nnls_pixels, n), replace=False))
    print(f"{'method':34s} {'pixels':>8s} {'seconds':>9s} {'pixels/s':>11s} {'peak MiB':>9s} {'max |dev|':>11s}")
    rows = []
    rows.append(run("scipy nnls / pixel (augmented)", lambda: fcls_scipy(Y[:, sub], E32), sub.size,
                    exact[:, sub], 1))
    rows.append(run("numpy ADMM x100 (float64)", lambda: fcls_admm_numpy(Y, E32), n, exact, a.repeat))

    def xr_np(dtype: str) -> np.ndarray:
        return cube.unmix.fcls(Eda, dtype=dtype).values.reshape(a.endmembers, n)

    from xr_unmix.solvers import fcls as fcls_array

    for th in sorted({1, a.threads}):
        torch.set_num_threads(th)
        for dt in ("float64", "float32"):
            rows.append(run(f"xr_unmix fcls numpy-in {dt} t={th}", lambda dt=dt: xr_np(dt), n, exact, a.repeat))
        rows.append(run(f"  solvers.fcls(Y, E) float64 t={th}",
                        lambda: fcls_array(Y, Eda.values, dtype="float64").numpy(), n, exact, a.repeat))
    lazy_cube = cube.chunk({"y": a.chunk, "x": -1, "band": -1})

    def xr_dask(dtype: str) -> np.ndarray:
        res = lazy_cube.unmix.fcls(Eda, dtype=dtype)
        return res.compute(scheduler="threads", num_workers=a.threads).values.reshape(a.endmembers, n)

    torch.set_num_threads(1)
    rows.append(run(f"xr_unmix fcls dask-in float64 ({a.chunk} rows)", lambda: xr_dask("float64"), n, exact,
                    a.repeat))
    rows.append(run(f"xr_unmix fcls dask-in float32 ({a.chunk} rows)", lambda: xr_dask("float32"), n, exact,
                    a.repeat))
    torch.set_num_threads(a.threads)
    ref_nnls, ref_admm = rows[0], rows[1]
    print(f"# load average at end {os.getloadavg()[0]:.2f} (cpu_count {os.cpu_count()}): figures above are "
          "affected by other processes when it exceeds the core count")
    for r in rows[2:]:
        eq = "yes" if r["max_dev"] <= ref_admm["max_dev"] else "NO"
        print(f"# {r['method']:34s} x{r['px_s'] / ref_admm['px_s']:6.1f} numpy ADMM, "
              f"x{r['px_s'] / ref_nnls['px_s']:7.1f} scipy nnls; max dev <= numpy ADMM's: {eq}")


if __name__ == "__main__":
    if ARGS.library:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from _bench_library import library_main

        library_main(ARGS)
    else:
        main()
