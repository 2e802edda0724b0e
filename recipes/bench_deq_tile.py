"""Where one DEQ-Unmix tile's time goes: FCLS start, Anderson, CNN, projection, halo, blending.

    nice -n 10 .venv/bin/python recipes/bench_deq_tile.py [--bands 150] [--core 256] [--repeat 5]

One interior tile of the dask path: a ``core``² chunk plus the model's halo on every side
(``(core + 2 halo)²`` pixels, ``--bands`` bands, 5 endmembers, the input of ``recipes/bench_models.py``),
run through the same kernel the accessor uses (:class:`xr_unmix._workers.ModelKernel` inside
:func:`xr_unmix.tiling.masked_kernel`, then the blending stage's weighting and assembly). The parts are
timed by wrapping the model's pieces (no profiler overhead in the totals): ``_fcls`` (the FCLS warm
start), each application of the operator ``f`` and inside it the CNN and the simplex projection; the
Anderson solver's own work is the solve's time less its ``f`` calls. Two models: the untrained default
(it sits at its FCLS start: one Anderson step) and one after 30 epochs of ``fit_scene`` with
``keep_best=False`` (it iterates). One torch thread (as a Dask task gets on 2 cores with 2 threads);
best of ``--repeat``; load average printed. ``--device cuda`` trains and runs the tile on the GPU, each
timed part synchronised.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


#: set to torch.cuda.synchronize when the tile runs on a GPU, so each timed part waits for its kernels
SYNC: Any = lambda: None  # noqa: E731


def _timed(acc: dict[str, float], name: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        SYNC()
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SYNC()
            acc[name] += time.perf_counter() - t0
            acc[name + " calls"] += 1

    return wrapper


def profile(model: Any, block: np.ndarray, halo: int, repeat: int,
            device: str = "cpu") -> tuple[dict[str, float], int]:
    """Best-of-``repeat`` breakdown (seconds) of one tile and the iterations of its solve."""
    import xr_unmix.models.deq as deq_mod
    import xr_unmix.models.deq_parts as parts_mod
    import xr_unmix.solvers.fixed_point as fp
    from xr_unmix import tiling
    from xr_unmix._workers import ModelKernel

    kernel = ModelKernel(model, device, np.dtype(np.float32))
    kernel(block)  # warm-up: model build from its payload, first-touch allocations
    best: dict[str, float] | None = None
    iters = 0
    for _ in range(repeat):
        acc: dict[str, float] = defaultdict(float)
        m = kernel._resolve()
        saved = (deq_mod._fcls, parts_mod.project_simplex, m.cnn.forward, m._map, fp.anderson)
        deq_mod._fcls = _timed(acc, "FCLS warm start", saved[0])
        parts_mod.project_simplex = _timed(acc, "projection", saved[1])
        m.cnn.forward = _timed(acc, "CNN", saved[2])

        def timed_map(*a: Any, _orig: Any = saved[3], **k: Any) -> Any:
            t0 = time.perf_counter()
            f = _orig(*a, **k)
            SYNC()
            acc["operator set-up (E^T Y, step size)"] += time.perf_counter() - t0
            return _timed(acc, "f", f)

        m._map = timed_map
        fp.anderson = _timed(acc, "solve", saved[4])
        try:
            t0 = time.perf_counter()
            out = tiling.masked_kernel(block, kernel, 5, np.float64)
            acc["kernel total"] = time.perf_counter() - t0
            ny = nx = 3  # blending: weights of an interior tile, then the core's assembly from 9 parts
            info = {0: {"chunk-location": (0, 1, 1), "num-chunks": (1, ny, nx)}}
            t0 = time.perf_counter()
            w = tiling.taper(out.shape[1], halo, True, True)[:, None] * tiling.taper(out.shape[2], halo, True,
                                                                                     True)[None, :]
            part = np.concatenate([out * w, w[None]], axis=0)
            acc["blend: weighting"] = time.perf_counter() - t0
            core = out.shape[1] - 2 * halo
            where = [(0, core, 0, core, 0, core, 0, core)] * 9
            t0 = time.perf_counter()
            tiling._assemble([part] * 9, where, (core, core), 5, np.float32)
            acc["blend: assembly (9 parts)"] = time.perf_counter() - t0
            del info
        finally:
            deq_mod._fcls, parts_mod.project_simplex, m.cnn.forward = saved[:3]
            del m._map
            fp.anderson = saved[4]
        iters = int(m.last_info.n_iter)
        if best is None or acc["kernel total"] < best["kernel total"]:
            best = dict(acc)
    return best, iters  # type: ignore[return-value]


def report(name: str, t: dict[str, float], iters: int, core: int, ext: int) -> None:
    total = t["kernel total"] + t["blend: weighting"] + t["blend: assembly (9 parts)"]
    f_only = t["f"] - t["CNN"] - t["projection"]
    rows = [
        ("FCLS warm start", t["FCLS warm start"]),
        ("operator set-up (E^T Y, step size)", t["operator set-up (E^T Y, step size)"]),
        (f"Anderson bookkeeping ({iters} iterations)", t["solve"] - t["f"]),
        (f"operator f: CNN ({int(t['CNN calls'])} calls)", t["CNN"]),
        (f"operator f: simplex projection ({int(t['projection calls'])} calls)", t["projection"]),
        ("operator f: gradient E^T E A - E^T Y, update", f_only),
        ("mask, tensors, copy out (kernel rest)",
         t["kernel total"] - t["FCLS warm start"] - t["operator set-up (E^T Y, step size)"] - t["solve"]),
        ("blend: weighting (taper, float64 concat)", t["blend: weighting"]),
        ("blend: assembly of a core from 9 parts", t["blend: assembly (9 parts)"]),
    ]
    print(f"\n{name}: {ext}² px tile ({core}² core + halo), {iters} Anderson iterations, {int(t['f calls'])} "
          f"operator calls; total {total * 1e3:.0f} ms = {core * core / total:.3g} core px/s")
    print("| part | ms | share |")
    print("|---|---|---|")
    for k, v in rows:
        print(f"| {k} | {v * 1e3:.1f} | {v / total:.0%} |")
    print(f"| halo overhead: {ext}²/{core}² - 1 of the kernel's work | "
          f"{t['kernel total'] * (1 - core * core / ext / ext) * 1e3:.1f} | "
          f"{t['kernel total'] * (1 - core * core / ext / ext) / total:.0%} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bands", type=int, default=150)
    ap.add_argument("--core", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--train-epochs", type=int, default=30)
    ap.add_argument("--device", default="cpu", help="torch device of the tile (and of the training)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    global SYNC
    if a.device.startswith("cuda"):
        SYNC = torch.cuda.synchronize
    import dask

    import bench_models as bm
    from xr_unmix.models.deq import DEQUnmix

    print(f"# bench_deq_tile: device {a.device}, torch threads {torch.get_num_threads()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}; cpu_count {os.cpu_count()}; load average at start "
          f"{os.getloadavg()[0]:.2f}")
    untrained = DEQUnmix.from_endmembers(bm.spectra(a.bands), seed=0)
    halo = untrained.halo
    ext = a.core + 2 * halo
    with dask.config.set(scheduler="sync"):
        cube = bm.lazy_cube(2 * bm.CHUNK, a.bands)
        block = np.ascontiguousarray(cube.data[:, :ext, :ext].compute())
        crop = cube[:, :128, :128].compute()
    trained = DEQUnmix.from_endmembers(bm.spectra(a.bands), seed=0).to(a.device)
    trained.fit_scene(crop, epochs=a.train_epochs, seed=0, progress=False, keep_best=False,
                      discrepancy=None)
    import warnings

    warnings.simplefilter("ignore")
    for name, model in (("untrained (defaults)", untrained), (f"trained {a.train_epochs} epochs", trained)):
        t, iters = profile(model.cpu(), block, halo, a.repeat, a.device)
        report(name, t, iters, a.core, ext)
    print(f"# load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
