"""Cluster vs local threads, the cost of writing a lazy map, and a batch of EMIT-sized scenes.

    nice -n 10 .venv/bin/python recipes/bench_cluster.py [--size 2048] [--bands 100] [--rounds 2] \\
        [--scene-dir /tmp/xr_unmix_scene] [--parts 1,2,3,4,5]   # the scenes are made once there, reused

Scenes: band-interleaved, 256-px tiled float32 GeoTIFFs (``bench_scale.make_scene``: Dirichlet mixtures
of 5 endmembers, 1 % NaN pixels). Every row is SUnSAL FCLS end to end (open, unmix, write, rename).

1. **Write cost** (local threads): ``fcls(...).compute()`` against ``to_cog`` (DEFLATE, the default;
   and ZSTD) and ``to_zarr`` of the same lazy map, rounds alternated; prints ``to_cog / compute``.
2. **Cluster vs threads** at ``--size``: local threads (2 threads, 1 torch thread per task) against
   ``xr_unmix.cluster.dask_scheduler(workers=2)`` (what ``xr-unmix run --workers 2`` starts: 2 worker
   processes x 1 thread), to COG and to Zarr. One cluster per round, started before its rows (start-up
   and warm-up printed, not counted); the order alternates (threads first in odd rounds, the cluster
   first in even ones). Ratio = cluster Mpx/s / threads Mpx/s, per round and best of the rounds.
3. The same through the CLI, once each, whole command (interpreter start, imports, cluster start-up).
4. **A batch of EMIT-sized scenes** (1242 x 1280 px x 285 bands, ``--chunk auto``, COG + Zarr, as
   ``xr-unmix batch --format tif,zarr`` writes them): ``run_batch`` over ``--emit-scenes`` copies of one
   scene on threads and on ``workers=2`` with ``--in-flight`` scenes at once (default 1 and 2),
   alternated; per scene and per batch (cluster start-up included), then what 100 such scenes cost
   from those figures. With scenes in flight the per-scene time is the batch's time over its scenes
   (start-up included: an upper bound).

5. **Scenes in flight** on one warm ``dask_scheduler(workers=2)``: ``run_batch`` over ``--flight-scenes``
   copies of a ``--flight-shape`` scene (COG + Zarr) with ``in_flight`` = each of ``--in-flight``,
   alternated; batch wall time (the cluster's start-up and the workers' first imports excluded).

CPU seconds count this process and all its children (scheduler, nannies, workers). Thread settings and
the load average are printed with the rows (the machine may be shared: compare within a run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale as bs  # noqa: E402

EMIT_SHAPE = (1242, 1280, 285)  # rows, columns, bands


def _timed(fn: Any) -> tuple[float, float]:
    with bs.PeakRSS() as mem:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    return wall, mem.cpu_s


def write_cost(scene: Path, E: Any, scratch: Path, rounds: int) -> None:
    import xr_unmix
    from xr_unmix.io import open_cube, to_cog, to_zarr

    px = 0
    rows = {"compute": lambda ab: ab.compute(),
            "to_cog": lambda ab: to_cog(ab, scratch / "w.tif", overwrite=True),
            "to_cog_zstd": lambda ab: to_cog(ab, scratch / "w.tif", overwrite=True, compress="ZSTD"),
            "to_zarr": lambda ab: to_zarr(ab, scratch / "w.zarr", overwrite=True)}
    times: dict[str, list[float]] = {k: [] for k in rows}
    print("\n# 1. write cost, local threads: compute() vs to_cog / to_zarr of the same lazy FCLS map")
    for rnd in range(rounds):
        for what, fn in rows.items():
            cube = open_cube(scene, chunks=256)
            px = cube.sizes["y"] * cube.sizes["x"]
            ab = xr_unmix.fcls(cube, E)
            load = os.getloadavg()[0]
            t, cpu = _timed(lambda ab=ab, fn=fn: fn(ab))
            times[what].append(t)
            print(f"  round {rnd + 1} {what:11s} {t:6.2f} s {px / t / 1e6:6.3f} Mpx/s  CPU {cpu:5.2f} s  "
                  f"load {load:.2f}", flush=True)
    b = {k: min(v) for k, v in times.items()}
    print(f"best of {rounds}: compute {b['compute']:.2f} s; to_cog {b['to_cog']:.2f} s "
          f"(x{b['to_cog'] / b['compute']:.2f} compute; target <= ~1.3); to_cog ZSTD {b['to_cog_zstd']:.2f} s "
          f"(x{b['to_cog_zstd'] / b['compute']:.2f}); to_zarr {b['to_zarr']:.2f} s "
          f"(x{b['to_zarr'] / b['compute']:.2f})")


def _worker_settings(client: Any) -> str:
    def probe(dask_worker: Any) -> tuple[Any, ...]:
        import torch

        return (torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"),
                os.environ.get("OPENBLAS_NUM_THREADS"), os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                os.environ.get("GDAL_CACHEMAX"), "profile" in dask_worker.periodic_callbacks)

    vals = set(client.run(probe).values())
    return "; ".join(f"torch {t} threads, OMP_NUM_THREADS={o}, OPENBLAS_NUM_THREADS={b}, "
                     f"MALLOC_TRIM_THRESHOLD_={m}, GDAL_CACHEMAX={g}, statistical profiler {'on' if p else 'off'}"
                     for t, o, b, m, g, p in sorted(vals, key=str))


def _start_cluster(stack: Any, scene: Path, E: Any) -> tuple[Any, float]:
    import xr_unmix
    from xr_unmix.cluster import dask_scheduler
    from xr_unmix.io import open_cube

    t0 = time.perf_counter()
    client = stack.enter_context(dask_scheduler(workers=2))
    client.run(bs._warm)
    xr_unmix.fcls(open_cube(scene, chunks=256)[:, :512, :512], E).compute()
    return client, time.perf_counter() - t0


def cluster_vs_threads(scene: Path, E: Any, scratch: Path, rounds: int) -> None:
    import contextlib

    print("\n# 2. cluster (LocalCluster 2 workers x 1 thread) vs local threads (2 threads, torch 1 thread "
          "per task); start-up and warm-up excluded")
    res: dict[tuple[str, str], list[float]] = {}
    for rnd in range(rounds):
        order = ("threads", "cluster") if rnd % 2 == 0 else ("cluster", "threads")
        for mode in order:
            with contextlib.ExitStack() as stack:
                extra = ""
                if mode == "cluster":
                    client, start = _start_cluster(stack, scene, E)
                    extra = f" (start-up + warm-up {start:.1f} s, not counted)"
                    if rnd == 0:
                        print(f"  workers: {_worker_settings(client)}")
                for fmt in ("tif", "zarr"):
                    out = scratch / f"c.{fmt}"
                    r = bs.run_one(scene, E, out, fmt, 256)
                    res.setdefault((mode, fmt), []).append(r["mpx_per_s"])
                    shutil.rmtree(out) if out.is_dir() else out.unlink()
                    print(f"  round {rnd + 1} {mode:7s} {fmt:4s} {r['wall_s']:6.2f} s {r['mpx_per_s']:6.3f} "
                          f"Mpx/s {r['mpx_per_cpu_s']:6.3f} Mpx/CPU-s peak RSS {r['peak_rss_mb']} MB  "
                          f"load {r['load1_start']:.2f}{extra}", flush=True)
    for fmt in ("tif", "zarr"):
        c, t = res[("cluster", fmt)], res[("threads", fmt)]
        per = ", ".join(f"{a / b:.2f}" for a, b in zip(c, t, strict=True))
        print(f"{fmt}: cluster / threads per round {per}; best of {rounds}: cluster {max(c):.3f} Mpx/s, "
              f"threads {max(t):.3f} Mpx/s: x{max(c) / max(t):.2f} (target >= 0.9)")


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


def _cpu_with_reaped_children() -> float:
    """CPU seconds of this process and of its children that have exited (a batch's own cluster)."""
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def emit_batch(scene_dir: Path, scratch: Path, rounds: int, n_scenes: int,
               shape: tuple[int, int, int] = EMIT_SHAPE, in_flight: tuple[int, ...] = (1,)) -> None:
    from xr_unmix.batch import run_batch
    from xr_unmix.testing import make_endmembers

    rows, cols, bands = shape
    E = make_endmembers(bands, 5, seed=2)
    src = scene_dir / f"emit_{rows}x{cols}x{bands}.tif"
    if not src.exists():
        t0 = time.perf_counter()
        bs.make_scene(src, rows, bands, E.values, seed=7, width=cols)
        print(f"made {src}: {src.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s")
    scenes = scratch / "emit_scenes"
    scenes.mkdir()
    for i in range(n_scenes):  # the same file under n names: n scenes for the batch
        (scenes / f"scene_{i:02d}.tif").symlink_to(src)
    csv = scratch / "emit_em.csv"
    E.to_pandas().to_csv(csv)
    px = rows * cols
    print(f"\n# 4. batch of {n_scenes} {'EMIT-sized ' if shape == EMIT_SHAPE else ''}scenes ({rows} x {cols} px x {bands} bands, float32, "
          f"{src.stat().st_size / 1e9:.2f} GB each), FCLS, chunk auto, COG + Zarr per scene")
    res: dict[str, list[tuple[float, float, float]]] = {}
    modes = ["threads"] + [f"cluster x{k}" if k > 1 else "cluster" for k in in_flight]
    for rnd in range(rounds):
        for mode in (modes if rnd % 2 == 0 else modes[::-1]):
            k = int(mode.split("x")[1]) if " x" in mode else 1
            out = scratch / "emit_out"
            load = os.getloadavg()[0]
            cpu0 = _cpu_with_reaped_children()
            with bs.PeakRSS() as mem:
                rep = run_batch([str(scenes / "*.tif")], out_dir=out, method="fcls", endmembers=str(csv),
                                formats=("tif", "zarr"), workers=2 if mode != "threads" else None,
                                progress=False, in_flight=k)
            cpu = _cpu_with_reaped_children() - cpu0  # the batch's cluster has exited and been reaped
            secs = [s["seconds"] for s in rep["scenes"]]
            bad = [s for s in rep["scenes"] if s["status"] != "done"]
            # per warm scene: the median scene time after the first; with scenes in flight (they overlap)
            # the batch's time over its scenes, start-up included
            warm = statistics.median(secs[1:]) if len(secs) > 1 else secs[0]
            if k > 1:
                warm = rep["seconds"] / len(secs)
            res.setdefault(mode, []).append((warm, rep["seconds"], cpu))
            print(f"  round {rnd + 1} {mode:10s} batch {rep['seconds']:6.2f} s (start-up included), per scene "
                  f"{', '.join(f'{s:.2f}' for s in secs)} s: {px / warm / 1e6:.3f} Mpx/s; CPU "
                  f"{cpu:.1f} s ({cpu / n_scenes:.2f} per scene, start-up included); peak RSS {mem.peak / 2**20:.0f} MB"
                  f"  load {load:.2f}{'  FAILED: ' + str(bad[0].get('error'))[:200] if bad else ''}", flush=True)
            shutil.rmtree(out)
    print("100 such scenes, from the best round of each (per scene: median of the warm scenes):")
    for mode, vals in res.items():
        warm, total, cpu = min(vals)
        fixed = max(0.0, total - warm * n_scenes)
        print(f"  {mode:10s}: {warm:.2f} s per scene -> {100 * warm / 60:.1f} min for 100 on these 2 cores "
              f"(+ {fixed:.1f} s once: start-up, first scene); CPU {cpu / n_scenes:.2f} s per scene = "
              f"{100 * cpu / n_scenes / 60:.1f} CPU-min per 100 (start-up shared by the {n_scenes})")


def in_flight_batch(scene_dir: Path, scratch: Path, rounds: int, n_scenes: int,
                    shape: tuple[int, int, int], in_flight: tuple[int, ...]) -> None:
    """Part 5: batches of ``n_scenes`` on ONE warm 2-worker cluster, ``in_flight`` scenes at once."""
    from xr_unmix.batch import run_batch
    from xr_unmix.runtime import dask_scheduler
    from xr_unmix.testing import make_endmembers

    rows, cols, bands = shape
    E = make_endmembers(bands, 5, seed=2)
    src = scene_dir / f"emit_{rows}x{cols}x{bands}.tif"
    if not src.exists():
        bs.make_scene(src, rows, bands, E.values, seed=7, width=cols)
    scenes = scratch / "flight_scenes"
    scenes.mkdir()
    for i in range(n_scenes):
        (scenes / f"scene_{i:02d}.tif").symlink_to(src)
    csv = scratch / "flight_em.csv"
    E.to_pandas().to_csv(csv)
    print(f"\n# 5. scenes in flight: batches of {n_scenes} scenes ({rows} x {cols} px x {bands} bands), FCLS, "
          f"chunk auto, COG + Zarr, on one warm dask_scheduler(workers=2) (start-up not counted)")
    res: dict[int, list[float]] = {}
    with dask_scheduler(workers=2) as client:
        addr = client.scheduler.address
        kw = dict(out_dir=scratch / "flight_out", method="fcls", endmembers=str(csv),
                  formats=("tif", "zarr"), scheduler=addr, progress=False, overwrite=True)
        run_batch([str(scenes / "scene_00.tif")], **kw)  # warm-up: the workers' first imports
        for rnd in range(rounds):
            for k in (in_flight if rnd % 2 == 0 else in_flight[::-1]):
                load = os.getloadavg()[0]
                cpu0 = _cpu_with_reaped_children()
                t0 = time.perf_counter()
                rep = run_batch([str(scenes / "*.tif")], in_flight=k, **kw)
                wall = time.perf_counter() - t0
                bad = [s for s in rep["scenes"] if s["status"] != "done"]
                res.setdefault(k, []).append(wall)
                print(f"  round {rnd + 1} in_flight {k}: batch {wall:6.2f} s = {wall / n_scenes:.2f} s per scene, "
                      f"{rows * cols * n_scenes / wall / 1e6:.3f} Mpx/s; client CPU {_cpu_with_reaped_children() - cpu0:.1f} s"
                      f"  load {load:.2f}{'  FAILED: ' + str(bad[0].get('error'))[:200] if bad else ''}", flush=True)
                shutil.rmtree(scratch / "flight_out")
    base = min(res[in_flight[0]])
    print("best of the rounds: " + ", ".join(f"in_flight {k}: {min(v):.2f} s ({base / min(v):.2f}x in_flight "
                                             f"{in_flight[0]})" for k, v in res.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--bands", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--emit-scenes", type=int, default=3)
    ap.add_argument("--scene-dir", type=Path, default=Path(tempfile.gettempdir()) / "xr_unmix_scene")
    ap.add_argument("--parts", default="1,2,3,4")
    ap.add_argument("--emit-shape", default=",".join(map(str, EMIT_SHAPE)),
                    help="rows,columns,bands of part 4's scenes (default EMIT's)")
    ap.add_argument("--flight-shape", default="1024,1024,100", help="part 5's scenes: rows,columns,bands")
    ap.add_argument("--flight-scenes", type=int, default=12, help="scenes per batch in part 5")
    ap.add_argument("--in-flight", default="1,2",
                    help="part 4: the cluster's scenes in flight (run_batch in_flight), one mode each")
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
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, MALLOC_TRIM_THRESHOLD_="
          f"{os.environ.get('MALLOC_TRIM_THRESHOLD_')}; load average at start {os.getloadavg()}", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    t_all = time.perf_counter()
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
        if "4" in parts:
            shape = tuple(int(v) for v in a.emit_shape.split(","))
            emit_batch(a.scene_dir, scratch, a.rounds, a.emit_scenes, shape,  # type: ignore[arg-type]
                       tuple(int(v) for v in a.in_flight.split(",")))
        if "5" in parts:
            shape = tuple(int(v) for v in a.flight_shape.split(","))
            in_flight_batch(a.scene_dir, scratch, a.rounds, a.flight_scenes, shape,  # type: ignore[arg-type]
                            tuple(int(v) for v in a.in_flight.split(",")))
        if "3" in parts:
            cli_runs(scene, E, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"# load average at end {os.getloadavg()}; {time.perf_counter() - t_all:.0f} s in all")


if __name__ == "__main__":
    main()
