"""Where a trained DEQ-Unmix's inference iterations go: re-solve protocol-trained models with other solver
settings (issue 17, point 4).

    nice -n 10 .venv/bin/python recipes/deq_solver_sweep.py train --scenes tune --seeds 2 --dir /tmp/deq_models
    nice -n 10 .venv/bin/python recipes/deq_solver_sweep.py sweep --scenes tune --seeds 2 --dir /tmp/deq_models
    nice -n 10 .venv/bin/python recipes/deq_solver_sweep.py bench

``train``: for every scene and seed ``s``, the protocol's ``deq`` method (``recipes/eval_deq.py``):
VCA endmembers (``vca(valid pixels, R, seed=s)``, clipped >= 0), ``DEQUnmix.from_endmembers(E, seed=s)``,
``fit_scene(cube, seed=s)`` with the package defaults (or ``--fit JSON``); the model is saved as
``DIR/SCENE_sSEED.safetensors`` (it stores its solver settings).

``bench``: the same settings on ``recipes/bench_deq_tile.py``'s trained model and tile (one solve each).

``sweep``: every saved model is loaded and the same scene unmixed through the accessor
(``cube.unmix.deq``) with one solver setting changed at a time (``SETTINGS``; no retraining: the weights
are the trained ones), 1 torch thread, best of ``--repeat`` timed solves. Per (scene, seed, setting):
Anderson iterations (``solver_max_iterations``), unconverged solves, inference time, aRMSE / mSAD
against the truth (Hungarian matching, the model's refined endmembers, as eval_deq scores), and the
max |A - A_ref| against the file's own settings ("saved") and against a tight solve (``tol=1e-6``,
``max_iter=3000``, ``anderson_m=10``).

"No change", fixed before the first sweep was run: on every TUNE (scene, seed), aRMSE within 1 %
(relative) of the saved settings' aRMSE, max |A - A_saved| < 1e-3, and no more unconverged solves.
A setting that cuts time and meets this on TUNE is a candidate default; it is confirmed on REPORT.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: one change at a time from the saved settings (name -> SolverConfig fields)
SETTINGS: dict[str, dict[str, Any]] = {
    "saved": {},
    "tol 3e-4": {"tol": 3e-4},
    "tol 1e-3": {"tol": 1e-3},
    "m 10": {"anderson_m": 10},
    "m 20": {"anderson_m": 20},
    "beta 0.8": {"anderson_beta": 0.8},
    "beta 0.5": {"anderson_beta": 0.5},
    "lam 1e-6": {"anderson_lam": 1e-6},
    "fcls 100": {"fcls_iter": 100},
    "fcls 50": {"fcls_iter": 50},
}
TIGHT = {"tol": 1e-6, "max_iter": 3000, "anderson_m": 10}


def _scenes(which: str) -> list[str]:
    import _eval_scenes as S

    return list({"tune": S.TUNE, "report": S.REPORT, "all": S.TUNE + S.REPORT}.get(which, which.split(",")))


def _vca(sc: dict[str, Any], seed: int) -> np.ndarray:
    from xr_unmix.extraction import vca

    cube = sc["cube"]
    flat = cube.values.reshape(cube.sizes["band"], -1)
    return np.clip(vca(flat, sc["E"].shape[1], seed=seed)[0], 0, None)


def train(a: argparse.Namespace) -> None:
    import _eval_scenes as S

    from xr_unmix.models.deq import DEQUnmix

    out = Path(a.dir)
    out.mkdir(parents=True, exist_ok=True)
    fit = json.loads(a.fit)
    for scene in _scenes(a.scenes):
        sc = S.load(scene)
        for seed in range(a.seeds):
            t0 = time.perf_counter()
            model = DEQUnmix.from_endmembers(_vca(sc, seed), seed=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hist = model.fit_scene(sc["cube"], seed=seed, progress=False, **fit)
            path = model.save(out / f"{scene}_s{seed}.safetensors")
            print(f"{scene} seed {seed}: trained in {time.perf_counter() - t0:.0f} s, best epoch "
                  f"{hist.get('best_epoch')}, skipped {hist.get('skipped')}; {path} "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)


def _with(model: Any, fields: dict[str, Any]) -> Any:
    """A copy of ``model`` (same weights) with its solver settings changed."""
    from xr_unmix.models.deq import DEQUnmix

    m = DEQUnmix._from_config({**model.config, "n_bands": model.n_bands, "n_endmembers": model.n_endmembers,
                               "endmember_names": model.endmember_names, "wavelengths": model.wavelengths,
                               **fields})
    m.load_state_dict(model.state_dict())
    return m


def _solve(model: Any, cube: Any, repeat: int) -> tuple[np.ndarray, dict[str, Any], float]:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            A = cube.unmix.deq(model)
            vals = A.values
        best = min(best, time.perf_counter() - t0)
    return vals, dict(A.attrs), best


def sweep(a: argparse.Namespace) -> None:
    import _eval_scenes as S
    from eval_deq import _score

    from xr_unmix.models import load_model

    rows = []
    for scene in _scenes(a.scenes):
        sc = S.load(scene)
        for seed in range(a.seeds):
            path = Path(a.dir) / f"{scene}_s{seed}.safetensors"
            if not path.exists():
                print(f"missing {path}", file=sys.stderr)
                continue
            model = load_model(path)
            Ed = np.asarray(model.endmembers.values, dtype=np.float64)
            A_tight, at, _ = _solve(_with(model, TIGHT), sc["cube"], 1)
            r_tight = _score(A_tight, Ed, sc)[0]
            ref = None
            for name, fields in {**SETTINGS, "sort-free projection": {}}.items():
                if name == "sort-free projection":  # the projection the sorting network replaced
                    import xr_unmix.models.deq_parts as parts
                    from xr_unmix.solvers.sunsal.simplex import project_simplex_sortfree

                    saved, parts.project_simplex = parts.project_simplex, project_simplex_sortfree
                try:
                    A, attrs, t = _solve(_with(model, fields), sc["cube"], a.repeat)
                finally:
                    if name == "sort-free projection":
                        parts.project_simplex = saved
                r, s = _score(A, Ed, sc)
                if ref is None:
                    ref = (A, r, int(attrs.get("solver_n_unconverged", 0)))
                ok = np.isfinite(A)
                row = dict(scene=scene, seed=seed, setting=name,
                           iters=int(attrs.get("solver_max_iterations", 0)),
                           unconv=int(attrs.get("solver_n_unconverged", 0)),
                           resid=float(attrs.get("solver_max_residual", np.nan)), time=t, armse=r, msad=s,
                           d_saved=float(np.abs(A - ref[0])[ok].max()),
                           d_tight=float(np.abs(A - A_tight)[ok].max()),
                           d_armse=(r - ref[1]) / ref[1],
                           tight_iters=int(at.get("solver_max_iterations", 0)), tight_armse=r_tight,
                           load=os.getloadavg()[0])
                row["no_change"] = bool(abs(row["d_armse"]) <= 0.01 and row["d_saved"] < 1e-3
                                        and row["unconv"] <= ref[2])
                rows.append(row)
                print(json.dumps(row), flush=True)
                if a.save:
                    with open(a.save, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(row) + "\n")
    report(rows)


def bench(a: argparse.Namespace) -> None:
    """The same settings on ``recipes/bench_deq_tile.py``'s trained model and tile (288² px, 150 bands,
    5 endmembers; 30 epochs of ``fit_scene`` on a 128² crop, ``keep_best=False``): one solve each."""
    import dask
    import torch

    import bench_models as bm
    from xr_unmix.models.deq import DEQUnmix

    model = DEQUnmix.from_endmembers(bm.spectra(150), seed=0)
    ext = 256 + 2 * model.halo
    with dask.config.set(scheduler="sync"):
        cube = bm.lazy_cube(2 * bm.CHUNK, 150)
        Y = torch.as_tensor(np.ascontiguousarray(cube.data[:, :ext, :ext].compute()))[None]
        crop = cube[:, :128, :128].compute()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit_scene(crop, epochs=30, seed=0, progress=False, keep_best=False, discrepancy=None)
    with torch.no_grad():
        tight = _with(model, TIGHT)
        A_tight = tight(Y, warn=False)
        print(f"bench tile {ext}²: tight solve {tight.last_info.n_iter} iterations")
        print("| setting | iterations | time s | max |A - A_saved| | max |A - A_tight| | load |")
        print("|---|---|---|---|---|---|")
        ref = None
        for name, fields in SETTINGS.items():
            m = _with(model, fields)
            t0 = time.perf_counter()
            A = m(Y, warn=False)
            t = time.perf_counter() - t0
            ref = A if ref is None else ref
            print(f"| {name} | {m.last_info.n_iter} | {t:.2f} | {float((A - ref).abs().max()):.1e} | "
                  f"{float((A - A_tight).abs().max()):.1e} | {os.getloadavg()[0]:.2f} |", flush=True)
    # the yardstick of issue 17's "within 10x of FCLS": FCLS (accessor defaults) on the tile's 256² core,
    # same thread, against the DEQ's whole tile (core + halo), untrained and trained, best of 3 each
    core = cube[:, model.halo:model.halo + 256, model.halo:model.halo + 256].compute()
    untrained = DEQUnmix.from_endmembers(bm.spectra(150), seed=0)
    times: dict[str, float] = {}
    for _ in range(3):
        for name, call in (("FCLS, 256² core", lambda: core.unmix.fcls(model.endmembers).values),
                           ("DEQ untrained, 288² tile", lambda: untrained(Y, warn=False)),
                           ("DEQ trained, 288² tile", lambda: model(Y, warn=False))):
            t0 = time.perf_counter()
            with torch.no_grad(), dask.config.set(scheduler="sync"):
                call()
            times[name] = min(times.get(name, np.inf), time.perf_counter() - t0)
    f = times["FCLS, 256² core"]
    print("; ".join(f"{k}: {v * 1e3:.0f} ms ({v / f:.1f}x FCLS)" for k, v in times.items()),
          f"(trained: {model.last_info.n_iter} iterations); load {os.getloadavg()[0]:.2f}")


def report(rows: list[dict[str, Any]]) -> None:
    """One markdown table: per setting, summed iterations and time over the (scene, seed) runs, worst
    aRMSE change and abundance changes, and whether "no change" holds in every run."""
    print("\n| setting | iterations (sum) | time s (sum) | time vs saved | max |d aRMSE| | max |A - A_saved| "
          "| max |A - A_tight| | unconverged | no change in every run |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = sum(r["time"] for r in rows if r["setting"] == "saved")
    for name in dict.fromkeys(r["setting"] for r in rows):
        rs = [r for r in rows if r["setting"] == name]
        t = sum(r["time"] for r in rs)
        print(f"| {name} | {sum(r['iters'] for r in rs)} | {t:.2f} | {t / base:.2f} | "
              f"{max(abs(r['d_armse']) for r in rs):.2%} | {max(r['d_saved'] for r in rs):.1e} | "
              f"{max(r['d_tight'] for r in rs):.1e} | {sum(r['unconv'] for r in rs)} | "
              f"{all(r['no_change'] for r in rs)} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("train", "sweep", "bench", "table"))
    ap.add_argument("--scenes", default="tune")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/deq_models")
    ap.add_argument("--fit", default="{}", help="fit_scene options, JSON")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--save", help="append one JSON line per sweep row")
    ap.add_argument("--load", nargs="*", default=[], help="(table) JSON-lines files of sweep rows")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    print(f"# deq_solver_sweep {a.what}: torch threads 1, cpu_count {os.cpu_count()}, load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    if a.what == "train":
        train(a)
    elif a.what == "sweep":
        sweep(a)
    elif a.what == "bench":
        bench(a)
    else:
        report([json.loads(ln) for f in a.load for ln in Path(f).read_text().splitlines()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
