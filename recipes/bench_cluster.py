"""Cluster vs local threads, and the cost of writing a lazy map, on one 2048² scene.

    nice -n 10 .venv/bin/python recipes/bench_cluster.py [--size 2048] [--bands 100] [--rounds 2] \
        [--scene-dir /tmp/xr_unmix_scene]      # the scene is made once there and reused

One band-interleaved, 256-px tiled float32 GeoTIFF (``bench_scale.make_scene``: Dirichlet mixtures of
5 endmembers, 1 % NaN pixels). All rows are SUnSAL FCLS, ``open_cube(chunks=256)``, end to end.

1. **Write cost** (local threads, this process): ``fcls(...).compute()`` against ``to_cog`` and
   ``to_zarr`` of the same lazy map, rounds alternated; prints ``to_cog / compute`` (target <= ~1.3).
2. **Cluster vs threads**, rounds alternated: local threads (2 threads, 1 torch thread each) against a
   LocalCluster of 2 worker processes x 1 thread (``xr_unmix.cluster.dask_scheduler(workers=2)``, what
   ``xr-unmix run --workers 2`` uses), to COG and to Zarr. The cluster's start-up and each worker's
   warm-up (imports, a first small solve) are excluded and printed; ratio = cluster Mpx/s / threads.
3. The same through the CLI, once each (``xr-unmix run SCENE --endmembers em.csv --out ...`` with and
   without ``--workers 2``): wall time of the whole command, start-up included.

Thread settings and the load average are printed with every row (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale as bs  # noqa: E402


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def write_cost(scene: Path, E: Any, scratch: Path, rounds: int) -> None:
    import xr_unmix
    from xr_unmix.io import open_cube, to_cog, to_zarr

    px = 0
    times: dict[str, list[float]] = {"compute": [], "to_cog": [], "to_zarr": []}
    print("\n# 1. write cost, local threads: compute() vs to_cog / to_zarr of the same lazy FCLS map")
    for rnd in range(rounds):
        for what in times:
            cube = open_cube(scene, chunks=256)
            px = cube.sizes["y"] * cube.sizes["x"]
            ab = xr_unmix.fcls(cube, E)
            load = os.getloadavg()[0]
            if what == "compute":
                t = _timed(ab.compute)
            elif what == "to_cog":
                t = _timed(lambda ab=ab: to_cog(ab, scratch / "w.tif", overwrite=True))
            else:
                t = _timed(lambda ab=ab: to_zarr(ab, scratch / "w.zarr", overwrite=True))
            times[what].append(t)
            print(f"  round {rnd + 1} {what:8s} {t:6.2f} s {px / t / 1e6:6.3f} Mpx/s  load {load:.2f}", flush=True)
    b = {k: min(v) for k, v in times.items()}
    print(f"best of {rounds}: compute {b['compute']:.2f} s, to_cog {b['to_cog']:.2f} s "
          f"(x{b['to_cog'] / b['compute']:.2f} compute; target <= ~1.3), to_zarr {b['to_zarr']:.2f} s "
          f"(x{b['to_zarr'] / b['compute']:.2f})")


def cluster_vs_threads(scene: Path, E: Any, scratch: Path, rounds: int) -> None:
    import xr_unmix
    from xr_unmix.cluster import dask_scheduler
    from xr_unmix.io import open_cube

    print("\n# 2. cluster (LocalCluster 2 workers x 1 thread, torch 1 thread each) vs local threads "
          "(2 threads, torch 1 thread per task); start-up and warm-up excluded")
    best: dict[tuple[str, str], float] = {}
    for rnd in range(rounds):
        for mode in ("threads", "cluster"):
            for fmt in ("tif", "zarr"):
                out = scratch / f"c.{fmt}"
                if mode == "threads":
                    r = bs.run_one(scene, E, out, fmt, 256)
                    extra = ""
                else:
                    t0 = time.perf_counter()
                    with dask_scheduler(workers=2) as client:
                        client.run(bs._warm)
                        xr_unmix.fcls(open_cube(scene, chunks=256)[:, :512, :512], E).compute()
                        start = time.perf_counter() - t0
                        r = bs.run_one(scene, E, out, fmt, 256)
                    extra = f" (start-up + warm-up {start:.1f} s, not counted)"
                best[(mode, fmt)] = max(best.get((mode, fmt), 0.0), r["mpx_per_s"])
                shutil.rmtree(out) if out.is_dir() else out.unlink()
                print(f"  round {rnd + 1} {mode:7s} {fmt:4s} {r['wall_s']:6.2f} s {r['mpx_per_s']:6.3f} Mpx/s "
                      f"{r['mpx_per_cpu_s']:6.3f} Mpx/CPU-s peak RSS {r['peak_rss_mb']} MB  "
                      f"load {r['load1_start']:.2f}{extra}", flush=True)
    for fmt in ("tif", "zarr"):
        c, t = best[("cluster", fmt)], best[("threads", fmt)]
        print(f"best of {rounds}, {fmt}: cluster {c:.3f} Mpx/s, threads {t:.3f} Mpx/s: x{c / t:.2f} "
              f"(target >= 0.9)")


def cli_runs(scene: Path, E: Any, scratch: Path) -> None:
    csv = scratch / "em.csv"
    E.to_pandas().to_csv(csv)
    exe = Path(sys.executable).with_name("xr-unmix")
    print("\n# 3. the CLI, whole command (interpreter start, imports, cluster start-up included), once each")
    for fmt in ("tif", "zarr"):
        for workers in ([], ["--workers", "2"]):
            out = scratch / f"cli.{fmt}"
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            r = subprocess.run([str(exe), "run", str(scene), "--endmembers", str(csv), "--method", "fcls",
                                "--chunk", "256", "--out", str(out), "--overwrite", *workers],
                               capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t0
            ok = "ok" if r.returncode == 0 else f"FAILED rc={r.returncode}: {r.stderr.strip()[-300:]}"
            print(f"  xr-unmix run {fmt:4s} {' '.join(workers) or '(threads)':12s} {wall:6.2f} s  load {load:.2f}  "
                  f"{ok}", flush=True)
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--bands", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scene-dir", type=Path, default=Path(tempfile.gettempdir()) / "xr_unmix_scene")
    ap.add_argument("--parts", default="1,2,3")
    a = ap.parse_args()
    from xr_unmix.testing import make_endmembers

    E = make_endmembers(a.bands, 5, seed=1)
    a.scene_dir.mkdir(parents=True, exist_ok=True)
    scene = a.scene_dir / f"scene_{a.size}x{a.bands}.tif"
    if not scene.exists():
        t0 = time.perf_counter()
        bs.make_scene(scene, a.size, a.bands, E.values, seed=a.size)
        print(f"made {scene}: {scene.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s")
    import torch

    print(f"# bench_cluster: {a.size}² x {a.bands} bands float32, 256² tiles/chunks, FCLS; cpu_count "
          f"{os.cpu_count()}, torch {torch.get_num_threads()} threads in this process (1 per Dask task), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; load average at start "
          f"{os.getloadavg()[0]:.2f}")
    scratch = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    try:
        import xr_unmix
        from xr_unmix.io import open_cube

        bs._warm()
        xr_unmix.fcls(open_cube(scene, chunks=256)[:, :256, :256], E).compute()
        parts = a.parts.split(",")
        if "1" in parts:
            write_cost(scene, E, scratch, a.rounds)
        if "2" in parts:
            cluster_vs_threads(scene, E, scratch, a.rounds)
        if "3" in parts:
            cli_runs(scene, E, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"# load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
