"""Throughput and peak memory of the networks through the accessor, beside FCLS, on dask cubes.

    nice -n 10 .venv/bin/python recipes/bench_models.py [--sizes 512 2048] [--bands 150] [--rounds 2]
        [--output sink|compute|zarr|cog] [--device cpu|cuda] [--order bands|dask]

Cases (each through ``cube.unmix``): ``fcls`` (SUnSAL FCLS), ``uadmm`` (U-ADMM-AENet
``from_endmembers``, 2 layers), ``deq`` (DEQ-Unmix defaults: the untrained model, which sits at its FCLS
start and stops after one Anderson step) and ``deq-trained`` (the same model after a short
``fit_scene`` on a 128² crop, saved to a scratch file: it iterates). ``deq-mo`` is ``deq`` with its halo
tiles through ``dask.array.map_overlap`` (the path before :mod:`xr_unmix._halo`), for a before/after in one
run. ``gen`` is the input alone (the lazy cube summed), i.e. what every row also pays to make its input.

The cube is lazy: 256² chunks of ``--bands`` bands, each made on the fly from a seeded random
abundance field and 5 earthlib-like smooth spectra plus noise, so the scene is never in memory
whole; by default the result goes to a sink that keeps only a checksum (no scene-sized output array
either); ``--output compute`` holds the result in memory (``.compute()``), ``zarr``/``cog`` write it with
``xr_unmix.io`` to a scratch file (``--order dask``: the writers' tasks in Dask's own order, as before
``xr_unmix.io._rowbands``, for a before/after).
Every (case, size) runs in a **fresh subprocess**: it builds the cube and the model, runs a 256² warm-up
(imports, polisher tables, first-touch allocations), then the timed run on Dask's threaded scheduler
with ``--threads`` workers. Peak RSS is the child's high-water mark (``ru_maxrss``, and an RSS sampler
every 5 ms) minus its RSS just before the timed compute. Rounds alternate over the cases (shared
machine): px/s is the best round, memory the largest. Load average and thread settings are printed.
``--device cuda`` runs every case's torch work on the GPU (training of ``deq-trained`` too) and adds the
GPU's peak allocated memory (``torch.cuda.max_memory_allocated``) to the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("gen", "fcls", "uadmm", "deq", "deq-mo", "deq-trained")
OUTPUTS = ("sink", "compute", "zarr", "cog")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's xr_unmix, not an installed one
CHUNK = 256
R = 5


def spectra(bands: int) -> np.ndarray:  # noqa: F821  (numpy imported in the child)
    """(bands, R) smooth positive spectra (fixed): sums of Gaussians over 400-2450 nm."""
    import numpy as np

    wl = np.linspace(400, 2450, bands)
    rng = np.random.default_rng(7)
    cols = []
    for _ in range(R):
        c = rng.uniform(400, 2450, 4)
        w = rng.uniform(100, 500, 4)
        a = rng.uniform(0.05, 0.4, 4)
        cols.append(0.05 + (a[:, None] * np.exp(-0.5 * ((wl - c[:, None]) / w[:, None]) ** 2)).sum(0))
    return np.stack(cols, 1).astype(np.float32)


def lazy_cube(size: int, bands: int) -> xr.DataArray:  # noqa: F821
    """A (band, y, x) float32 dask cube, 256² chunks, each chunk made from its position (seeded)."""
    import dask.array as da
    import numpy as np
    import xarray as xr

    E = spectra(bands)

    def block(block_id: tuple[int, int, int] | None = None, block_info: dict | None = None) -> np.ndarray:
        (_, y0y1, x0x1) = block_info[None]["array-location"]
        h, w = y0y1[1] - y0y1[0], x0x1[1] - x0x1[0]
        rng = np.random.default_rng([y0y1[0], x0x1[0]])
        logits = rng.normal(size=(R, 8, 8)).astype(np.float32)
        up = np.repeat(np.repeat(logits, -(-h // 8), 1), -(-w // 8), 2)[:, :h, :w]
        A = np.exp(2 * up)
        A /= A.sum(0)
        Y = (E @ A.reshape(R, -1)).reshape(bands, h, w)
        Y += 0.002 * rng.standard_normal((1, h, w), dtype=np.float32)  # per-pixel offset noise (cheap)
        return Y

    chunks = ((bands,), (CHUNK,) * (size // CHUNK), (CHUNK,) * (size // CHUNK))
    data = da.map_blocks(block, chunks=chunks, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))
    return xr.DataArray(data, dims=("band", "y", "x"), coords={"band": np.arange(1, bands + 1)})


class _Sink:
    """A ``da.store`` target that keeps a checksum and the count of NaN values, nothing else."""

    def __init__(self) -> None:
        import threading

        self.total, self.nan, self.lock = 0.0, 0, threading.Lock()

    def __setitem__(self, key: object, value: np.ndarray) -> None:  # noqa: F821
        import numpy as np

        s, n = float(np.nansum(value)), int(np.isnan(value).sum())
        with self.lock:
            self.total += s
            self.nan += n


def _result(cube: xr.DataArray, case: str, model: object, device: str = "cpu") -> xr.DataArray:  # noqa: F821
    if case == "gen":
        return cube.sum("band", keepdims=True).rename(band="endmember")
    if case == "fcls":
        return cube.unmix.fcls(spectra(cube.sizes["band"]), device=device)
    if case == "uadmm":
        return cube.unmix.admm(model, device=device)
    return cube.unmix.deq(model, device=device)


def _run(res: xr.DataArray, output: str, sink: _Sink, tmp: Path) -> None:  # noqa: F821
    """Compute ``res`` into ``output``: the checksum sink, memory, or a Zarr/COG file under ``tmp``."""
    import dask.array as da

    if output == "sink":
        da.store(res.data, sink, lock=False)
    elif output == "compute":
        sink[...] = res.compute().values
    elif output == "zarr":
        from xr_unmix.io.zarr import to_zarr

        to_zarr(res, tmp / "out.zarr", overwrite=True)
    else:
        from xr_unmix.io.cog import to_cog

        to_cog(res, tmp / "out.tif", overwrite=True)


def child(case: str, size: int, bands: int, threads: int, model_path: str, output: str = "sink",
          device: str = "cpu", order: str = "bands") -> dict:
    import resource
    import threading
    import warnings

    import dask
    import psutil
    import torch

    import xr_unmix  # noqa: F401  (the accessor)
    from xr_unmix import _halo
    from xr_unmix.models.base import load_model

    if case == "deq-mo":  # halo tiles through map_overlap, as before xr_unmix._halo
        _halo.RECOMPUTE_MIN_CHUNKS = 10**9
    if order == "dask":  # the writers without their row bands: no store-map task is recognised
        from xr_unmix.io import _rowbands

        _rowbands.STORE_PREFIX = "no-such-layer-"

    warnings.simplefilter("ignore")  # the trained DEQ's ConvergenceWarning per tile (counted below)
    proc = psutil.Process()
    model = None
    if case == "uadmm":
        from xr_unmix import UADMMNet

        model = UADMMNet.from_endmembers(spectra(bands), layers=2)
    elif case in ("deq", "deq-mo"):
        from xr_unmix.models.deq import DEQUnmix

        model = DEQUnmix.from_endmembers(spectra(bands), seed=0)
    elif case == "deq-trained":
        model = load_model(model_path)
    tmp = Path(tempfile.mkdtemp(prefix="bench_models_out_"))
    with dask.config.set(scheduler="threads", num_workers=threads):
        _run(_result(lazy_cube(CHUNK, bands), case, model, device), output, _Sink(), tmp)  # warm-up
        if model is not None and hasattr(model, "reset_solve_stats"):
            model.reset_solve_stats()
        res = _result(lazy_cube(size, bands), case, model, device)
        sink = _Sink()
        base = proc.memory_info().rss
        peak = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.005):
                peak[0] = max(peak[0], proc.memory_info().rss)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        cpu0, t0 = proc.cpu_times(), time.perf_counter()
        _run(res, output, sink, tmp)
        wall = time.perf_counter() - t0
        cpu1 = proc.cpu_times()
        stop.set()
        th.join()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stats = dict(getattr(model, "solve_stats", {}) or {})  # local threads: the tasks use this model
    return {"case": case, "size": size, "wall_s": wall, "px_s": size * size / wall,
            "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            "base_mb": base / 2**20, "extra_mb": (max(peak[0], maxrss) - base) / 2**20,
            "torch_threads": torch.get_num_threads(), "nan": sink.nan,
            "max_iterations": stats.get("max_iterations"), "n_solves": stats.get("n_solves"),
            "n_unconverged": stats.get("n_unconverged"), "load": os.getloadavg()[0],
            "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None}


def train_deq(bands: int, path: Path, epochs: int, device: str = "cpu") -> str:
    """A DEQ-Unmix after ``epochs`` of ``fit_scene`` on a 128² crop of the lazy cube (trained on ``device``);
    saved to ``path``."""
    import dask
    import torch

    from xr_unmix.models.deq import DEQUnmix

    torch.set_num_threads(1)
    with dask.config.set(scheduler="sync"):
        crop = lazy_cube(CHUNK, bands)[:, :128, :128].compute()
    model = DEQUnmix.from_endmembers(spectra(bands), seed=0).to(device)
    t0 = time.perf_counter()
    # keep_best=False: the last epoch's weights (the best objective is often the untrained start, which
    # sits at its FCLS start and stops after one step; the point here is a model that iterates)
    hist = model.fit_scene(crop, epochs=epochs, seed=0, progress=False, keep_best=False,
                           discrepancy=None)
    model.cpu().save(path)
    return f"{epochs} epochs of fit_scene on {device} (keep_best=False) in {time.perf_counter() - t0:.1f} s, " \
           f"loss {hist['initial_loss']:.3g} at the start"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--bands", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2, help="dask threads (torch: 1 per task)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--big-rounds", type=int, default=1, help="rounds at the largest size")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--train-epochs", type=int, default=30)
    ap.add_argument("--trained-max-size", type=int, default=512,
                    help="deq-trained only up to this size (it runs ~100x slower than FCLS)")
    ap.add_argument("--output", default="sink", choices=OUTPUTS,
                    help="where the result goes: a checksum sink, memory (.compute()), Zarr or COG")
    ap.add_argument("--device", default="cpu", help="torch device of every case (cpu, cuda)")
    ap.add_argument("--order", default="bands", choices=("bands", "dask"),
                    help="zarr/cog: the writers' row bands (default) or Dask's own order (before)")
    ap.add_argument("--child", nargs=3, metavar=("CASE", "SIZE", "MODEL"))
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.bands, a.threads, a.child[2], a.output,
                               a.device, a.order)))
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench_models_"))
    mp = tmp / "deq_trained.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print(f"# bench_models: dask cubes {a.sizes} px square, {a.bands} bands, {R} endmembers, {CHUNK}² chunks; "
          f"threaded scheduler, {a.threads} dask threads, torch 1 thread per task (xr_unmix policy), "
          f"OMP/OPENBLAS/MKL_NUM_THREADS=1; cpu_count {os.cpu_count()}; device {a.device}; output {a.output}; "
          f"order {a.order}; "
          f"load average "
          f"at start {os.getloadavg()[0]:.2f}; xr_unmix from {ROOT}")
    if "deq-trained" in a.cases:
        out = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r});"
                              f"import bench_models as b; from pathlib import Path; "
                              f"print(b.train_deq({a.bands}, Path({str(mp)!r}), {a.train_epochs}, {a.device!r}))"],
                             capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(out.stderr)
        print(f"# deq-trained: {out.stdout.strip()} (load {os.getloadavg()[0]:.2f})")
    if a.output != "sink" and "gen" in a.cases:  # the input alone has no abundance map to write
        a.cases = [c for c in a.cases if c != "gen"]
    rows: dict[tuple[str, int], list[dict]] = {}
    for rnd in range(a.rounds):
        for size in [s for s in a.sizes if s < max(a.sizes) or rnd < a.big_rounds]:
            for case in a.cases:
                if case == "deq-trained" and size > a.trained_max_size:
                    continue
                cmd = [sys.executable, __file__, "--bands", str(a.bands), "--threads", str(a.threads),
                       "--output", a.output, "--device", a.device, "--order", a.order,
                       "--child", case, str(size), str(mp)]
                r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if r.returncode:
                    sys.exit(f"{case} {size}: {r.stderr[-2000:]}")
                row = json.loads(r.stdout.strip().splitlines()[-1])
                rows.setdefault((case, size), []).append(row)
                print(f"  round {rnd + 1} {case:11s} {size:5d}² {row['px_s']:10.3g} px/s "
                      f"extra {row['extra_mb']:7.0f} MB  load {row['load']:.2f}", flush=True)
    report(rows, a)


def _peak(rows: dict[tuple[str, int], list[dict]], case: str, size: int) -> float:
    return max(r["extra_mb"] for r in rows[(case, size)])


def _its(r: dict) -> str:
    return "" if r["max_iterations"] is None else f"{r['max_iterations']} ({r['n_unconverged']}/{r['n_solves']})"


def report(rows: dict[tuple[str, int], list[dict]], a: argparse.Namespace) -> None:
    print(f"\n| case | size | px/s (best of {a.rounds}; {a.big_rounds} at {max(a.sizes)}²) | x FCLS | CPU s | peak RSS extra MB (max) | "
          "RSS before MB | torch threads | DEQ max iterations (unconverged/solves) | load | GPU peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in a.sizes:
        fc = max(r["px_s"] for r in rows.get(("fcls", size), [{"px_s": float("nan")}]))
        for case in a.cases:
            if (case, size) not in rows:
                continue
            rs = rows[(case, size)]
            best = max(rs, key=lambda r: r["px_s"])
            print(f"| {case} | {size}² | {best['px_s']:.3g} | {best['px_s'] / fc:.2f} | {best['cpu_s']:.1f} | "
                  f"{max(r['extra_mb'] for r in rs):.0f} | {best['base_mb']:.0f} | {best['torch_threads']} | "
                  f"{_its(best)} | {min(r['load'] for r in rs):.1f}-{max(r['load'] for r in rs):.1f} | "
                  f"{'' if best.get('gpu_peak_mb') is None else format(best['gpu_peak_mb'], '.0f')} |")
    if len(a.sizes) > 1:
        lo, hi = min(a.sizes), max(a.sizes)
        print(f"\npeak RSS extra MB, {lo}² -> {hi}² ({(hi / lo) ** 2:.0f}x the pixels; {a.threads} dask threads, "
              f"torch 1 per task, output {a.output}, load {os.getloadavg()[0]:.2f}): " + ", ".join(
                  f"{c} {_peak(rows, c, lo):.0f} -> {_peak(rows, c, hi):.0f} "
                  f"({_peak(rows, c, hi) / max(1.0, _peak(rows, c, lo)):.2f}x)"
                  for c in a.cases if (c, hi) in rows and (c, lo) in rows))
    print(f"# load average at end {os.getloadavg()[0]:.2f} (cpu_count {os.cpu_count()})")


if __name__ == "__main__":
    main()
