"""Scale benchmark: SUnSAL (FCLS) on large synthetic GeoTIFFs, streamed to COG and to Zarr.

Makes synthetic cubes (default 512², 1024² and 2048² px x 200 bands, float32: 0.2, 0.8 and 3.2 GB),
tiled GeoTIFFs in a scratch directory outside the repository, and reports for each size and output
format: wall time (open -> unmix -> write -> rename, end to end), throughput (Mpx/s) and peak RSS (this
process plus its children, sampled every 20 ms). Then the same unmixing to Zarr on a LocalCluster with 1
and with 2 worker processes (1 thread each), to show how throughput scales with workers. Scratch files are
deleted at the end (``--keep`` keeps them).

    .venv/bin/python recipes/bench_scale.py                       # the full run (~3.5 GB of scratch)
    .venv/bin/python recipes/bench_scale.py --sizes 512 1024 --cluster-size 512   # a quick one

Figures depend on the machine and on whatever else runs on it: report them with the machine and load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


class PeakRSS:
    """Sample the resident set size of this process and its children in a background thread.

    ``peak`` (bytes) is the largest sum of RSS over the process tree seen between ``start`` and
    ``stop``; ``baseline`` the sum at ``start``.
    """

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.baseline = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        import psutil

        total = 0
        procs = [self.proc]
        try:
            procs += self.proc.children(recursive=True)
        except psutil.Error:
            pass
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.baseline = self.peak = self._rss()
        self._cpu0 = self._cpu()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _cpu(self) -> float:
        """CPU seconds (user + system) of this process and its live children."""
        import psutil

        total = sum(self.proc.cpu_times()[:2])
        try:
            for c in self.proc.children(recursive=True):
                try:
                    total += sum(c.cpu_times()[:2])
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        return total

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.cpu_s = self._cpu() - self._cpu0


def make_scene(path: Path, size: int, n_bands: int, E: np.ndarray, *, seed: int = 0,
               tile: int = 256, width: int | None = None) -> None:
    """Write a ``size x size x n_bands`` float32 tiled GeoTIFF of Dirichlet mixtures of ``E``, streamed.

    ``width`` (default ``size``) makes a ``size`` rows x ``width`` columns scene instead.

    Band-interleaved tiles of ``tile`` px (GDAL reads a spatial chunk as one contiguous tile per
    band; pixel-interleaved tiles of 200 bands read ~5x slower), uncompressed, EPSG:32633, 30 m pixels; 1 % of pixels NaN (nodata), noise at ~40 dB SNR.
    """
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    R = E.shape[1]
    height, size = size, (width or size)
    profile = dict(driver="GTiff", width=size, height=height, count=n_bands, dtype="float32",
                   crs="EPSG:32633", transform=from_origin(500_000, 4_000_000, 30, 30),
                   tiled=True, blockxsize=tile, blockysize=tile, interleave="band",
                   nodata=float("nan"), BIGTIFF="IF_SAFER")
    with rasterio.open(path, "w", **profile) as dst:
        for y0 in range(0, height, tile):
            h = min(tile, height - y0)
            A = rng.dirichlet(np.full(R, 0.7), size=h * size).astype(np.float32)  # (px, R)
            Y = A @ E.T.astype(np.float32)
            Y += rng.normal(0, 0.01 * float(Y.mean()), Y.shape).astype(np.float32)
            Y[rng.random(h * size) < 0.01] = np.nan
            dst.write(np.ascontiguousarray(Y.T.reshape(n_bands, h, size)),
                      window=((y0, y0 + h), (0, size)))


def run_one(scene: Path, E: Any, out: Path, fmt: str, chunk: int) -> dict[str, Any]:
    """Unmix ``scene`` with FCLS to ``out`` (``fmt`` ``tif``/``zarr``) on the active scheduler."""
    import xr_unmix
    from xr_unmix.io import open_cube, to_cog, to_zarr

    load = os.getloadavg()[0]
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        cube = open_cube(scene, chunks=chunk)
        ab = xr_unmix.fcls(cube, E)
        (to_cog if fmt == "tif" else to_zarr)(ab, out, overwrite=True)
        wall = time.perf_counter() - t0
    px = cube.sizes["y"] * cube.sizes["x"]
    return {"pixels": int(px), "wall_s": round(wall, 2), "mpx_per_s": round(px / wall / 1e6, 3),
            "cpu_s": round(mem.cpu_s, 2), "mpx_per_cpu_s": round(px / max(mem.cpu_s, 1e-9) / 1e6, 3),
            "peak_rss_mb": round(mem.peak / 2**20), "baseline_rss_mb": round(mem.baseline / 2**20),
            "input_gb": round(scene.stat().st_size / 1e9, 2), "load1_start": round(load, 2),
            "load1_end": round(os.getloadavg()[0], 2)}


def _check(out: Path, fmt: str, n_em: int) -> None:
    """The output is complete and sane: every layer present, abundances on the simplex."""
    import rasterio

    if fmt == "tif":
        with rasterio.open(out) as src:
            assert src.count == n_em and src.overviews(1), "COG without all layers/overviews"
            a = src.read(out_shape=(n_em, 64, 64))  # a decimated read touches the whole file
    else:
        from xr_unmix.io import open_abundance

        a = open_abundance(out)[:, ::32, ::32].values
    ok = np.isfinite(a).all(0)
    s = a[:, ok].sum(0)
    assert ok.mean() > 0.5 and np.allclose(s, 1, atol=1e-2), "abundances do not sum to one"


def _warm() -> None:
    import zarr  # noqa: F401  (imported by the first to_zarr otherwise: ~0.4 s of CPU in that run)

    import xr_unmix.api  # noqa: F401
    import xr_unmix.solvers.sunsal  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--bands", type=int, default=200)
    ap.add_argument("--endmembers", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--cluster-size", type=int, default=1024,
                    help="scene size for the 1 vs 2 LocalCluster workers comparison (0: skip)")
    ap.add_argument("--scratch", type=Path, default=None,
                    help="scratch directory (default a new one under $TMPDIR or /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch files")
    ap.add_argument("--scenes-dir", type=Path, default=None,
                    help="make the scenes here (or reuse scene_<size>.tif already there; same seeds) "
                         "and keep them; outputs still go to the scratch directory")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    from xr_unmix.testing import make_endmembers

    need = sum(s * s * args.bands * 4 for s in set(args.sizes) | {args.cluster_size}) * 1.3
    if args.scenes_dir is not None:
        need = 0.0
    scratch = Path(tempfile.mkdtemp(prefix="xr_unmix_bench_", dir=args.scratch))
    free = shutil.disk_usage(scratch).free
    if free < need:
        print(f"not enough space in {scratch}: {free / 1e9:.1f} GB free, {need / 1e9:.1f} GB needed",
              file=sys.stderr)
        shutil.rmtree(scratch)
        return 2
    E = make_endmembers(args.bands, args.endmembers, seed=1)
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(),
                                           "loadavg_start": os.getloadavg(),
                                           "note": "shared machine: other jobs may load it"},
                               "threads": [], "cluster": []}
    try:
        scenes: dict[int, Path] = {}
        for size in sorted(set(args.sizes) | ({args.cluster_size} - {0})):
            p = (args.scenes_dir or scratch) / f"scene_{size}.tif"
            scenes[size] = p
            if args.scenes_dir is not None and p.exists():
                print(f"reusing {p}", flush=True)
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            make_scene(p, size, args.bands, E.values, seed=size)
            print(f"made {p.name}: {size}x{size}x{args.bands} float32, "
                  f"{p.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s", flush=True)

        # warm-up (imports, first torch call) so that the first measurement does not include it
        import xr_unmix
        from xr_unmix.io import open_cube

        small = min(scenes)
        _warm()
        xr_unmix.fcls(open_cube(scenes[small], chunks=args.chunk)[:, :64, :64], E).compute()

        print("\n# local threads (Dask default scheduler), SUnSAL FCLS, end to end", flush=True)
        print(f"{'size':>6} {'fmt':>5} {'wall s':>8} {'Mpx/s':>7} {'CPU s':>7} {'Mpx/CPU-s':>9} "
              f"{'peak RSS MB':>12} {'(start MB)':>10} {'load':>5}", flush=True)
        for size in args.sizes:
            for fmt in ("tif", "zarr"):
                out = scratch / f"out_{size}.{fmt}"
                r = run_one(scenes[size], E, out, fmt, args.chunk)
                _check(out, fmt, args.endmembers)
                shutil.rmtree(out) if out.is_dir() else out.unlink()
                results["threads"].append({"size": size, "format": fmt, **r})
                print(f"{size:>6} {fmt:>5} {r['wall_s']:>8.2f} {r['mpx_per_s']:>7.3f} "
                      f"{r['cpu_s']:>7.1f} {r['mpx_per_cpu_s']:>9.3f} "
                      f"{r['peak_rss_mb']:>12} {r['baseline_rss_mb']:>10} {r['load1_start']:>5.1f}", flush=True)
        walls = {r["size"]: r["wall_s"] for r in results["threads"] if r["format"] == "zarr"}
        if len(walls) > 1:
            s0 = min(walls)
            print("time per pixel relative to the smallest (zarr; 1.0 = linear): " + ", ".join(
                f"{s}²: {walls[s] / walls[s0] / (s * s / (s0 * s0)):.2f}" for s in sorted(walls)))

        if args.cluster_size:
            from xr_unmix.cluster import dask_scheduler

            print(f"\n# LocalCluster (processes, 1 thread each), {args.cluster_size}² to Zarr; "
                  "cluster start-up and worker warm-up (imports) not included", flush=True)
            for n in (1, 2):
                t0 = time.perf_counter()
                with dask_scheduler(workers=n) as client:
                    # warm-up: import torch and the solver in every worker (seconds on a busy machine)
                    client.run(_warm)
                    start = time.perf_counter() - t0
                    out = scratch / f"cluster_{n}.zarr"
                    r = run_one(scenes[args.cluster_size], E, out, "zarr", args.chunk)
                    _check(out, "zarr", args.endmembers)
                    shutil.rmtree(out)
                results["cluster"].append({"workers": n, "startup_s": round(start, 2), **r})
                print(f"workers={n}: {r['wall_s']:.2f} s, {r['mpx_per_s']:.3f} Mpx/s, "
                      f"{r['mpx_per_cpu_s']:.3f} Mpx/CPU-s, peak RSS "
                      f"{r['peak_rss_mb']} MB (all processes), start-up {start:.1f} s, "
                      f"load {r['load1_start']:.1f}", flush=True)
    finally:
        if args.keep:
            print(f"scratch kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    print(f"load average (1, 5, 15 min) at start {results['machine']['loadavg_start']}, "
          f"at end {results['machine']['loadavg_end']} on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
