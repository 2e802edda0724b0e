"""DEQ-Unmix evaluation protocol (issue 16): many scenes, fixed seeds, one markdown table.

Scenes and their TUNE / REPORT split: ``recipes/_eval_scenes.py`` (Jasper Ridge, both sample scenes,
synthetic scenes from :func:`xr_unmix.simulate.simulate_scene`). For every scene and seed ``s``:

Unsupervised, from ``R`` VCA endmembers (``vca(valid pixels, R, seed=s)``, clipped >= 0):

- ``fcls``: VCA+FCLS, ``cube.unmix.fcls(E_vca, tol=1e-6, max_iter=2000)``;
- ``sunsal``: VCA+SUnSAL, ``cube.unmix.sunsal(E_vca, lam=1e-4, asc=False)`` (ANC only: with ASC the l1
  term is constant);
- ``deq0``: the untrained DEQ operator (``DEQUnmix.from_endmembers(E_vca, seed=s, **deq)``, no training);
  with the package defaults it is projected gradient descent, whose equilibrium is FCLS's;
- ``nocnn``: the ablation, DEQ without the network: ``use_cnn=False``, then ``fit_scene`` as ``deq``
  (only the endmembers learn);
- ``deq``: DEQ-Unmix, ``DEQUnmix.from_endmembers(E_vca, seed=s, **deq)`` then ``fit_scene(cube, seed=s,
  **fit)``; with empty ``--deq`` / ``--fit`` these are the package defaults.

Supervised, 256 labelled pixels (``default_rng(s)`` over the valid pixels), scored on the other valid
pixels, with the reference endmembers: ``sup_fcls`` (FCLS), ``sup_uadmm`` (``UADMMNet.from_endmembers(E)
.fit(Y_l, A_l, seed=s)``, defaults), ``sup_deq`` (``DEQUnmix.from_endmembers(E, seed=s, kernel_size=1)
.fit(Y_l, A_l, seed=s)``: pixel labels, a pixel-wise operator; otherwise defaults, plus ``--deq-sup`` /
``--fit-sup``).

Scores: aRMSE (:func:`xr_unmix.metrics.rmse`) and mSAD (radians) after pairing the estimated endmembers
with the reference ones by the Hungarian method (:func:`xr_unmix.metrics.match`); the DEQ's own refined
endmembers for the DEQ. ``time``: training + inference, s. ``warn``: :class:`xr_unmix.ConvergenceWarning`s
raised (fit + inference); ``unconv``: inference solves that stopped above tolerance
(``attrs["solver_n_unconverged"]``). Nothing in training or model selection sees the truth.

Run: ``python recipes/eval_deq.py [--scenes tune|report|all|a,b] [--seeds 3] [--methods ...] [--quick]``
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Self

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

N_LABELLED = 256
#: the supervised DEQ's construction: labels at isolated pixels train a pixel-wise operator (a 3x3 CNN
#: would see each pixel's own spectrum as its neighbours while training, real neighbours after;
#: measured on the TUNE scenes, docs/deq.md)
SUP_DEQ = {"kernel_size": 1}


class _Counter:
    """Counts ConvergenceWarnings raised inside a ``with`` block."""

    def __enter__(self) -> Self:
        from xr_unmix.errors import ConvergenceWarning

        self._cm = warnings.catch_warnings(record=True)
        self._log = self._cm.__enter__()
        warnings.simplefilter("always", ConvergenceWarning)
        self._cls = ConvergenceWarning
        return self

    def __exit__(self, *exc: object) -> None:
        self.n = sum(issubclass(w.category, self._cls) for w in self._log)
        self._cm.__exit__(*exc)


def _score(A: Any, E_est: np.ndarray, sc: dict[str, Any], pixels: np.ndarray | None = None) -> tuple:
    """(aRMSE, mSAD) after Hungarian matching of ``E_est`` to the reference; on ``pixels`` only if given."""
    from xr_unmix.metrics import match, rmse

    m = match(E_est, sc["E"])
    Am = np.asarray(m.reorder_abundances(np.asarray(A, dtype=np.float64)))
    R = Am.shape[0]
    est, tru = Am.reshape(R, -1), sc["truth"].reshape(R, -1)
    if pixels is not None:
        est, tru = est[:, pixels], tru[:, pixels]
    return rmse(est, tru), float(m.mean_sad)


def _deq_unsup(sc: dict[str, Any], E: np.ndarray, seed: int, deq: dict, fit: dict, train: bool,
               cls: Any = None) -> dict:
    from xr_unmix.models.deq import DEQUnmix

    cls = cls or DEQUnmix

    cube = sc["cube"]
    t0 = time.perf_counter()
    with _Counter() as c:
        model = cls.from_endmembers(E, seed=seed, **deq)
        hist = model.fit_scene(cube, seed=seed, progress=False, **fit) if train else {}
        A = cube.unmix.deq(model)
    Ed = np.asarray(model.endmembers.values, dtype=np.float64)
    r, s = _score(A.values, Ed, sc)
    return dict(armse=r, msad=s, time=time.perf_counter() - t0, warn=c.n,
                unconv=int(A.attrs.get("solver_n_unconverged", 0)), best_epoch=hist.get("best_epoch"),
                **({"sp_w": float(model.sp_w.detach().clamp(0, 1))} if hasattr(model, "sp_w") else {}))


def _unsupervised(sc: dict[str, Any], seed: int, methods: list[str], opts: dict) -> dict[str, dict]:
    from xr_unmix.extraction import vca

    cube = sc["cube"]
    R = sc["E"].shape[1]
    flat = cube.values.reshape(cube.sizes["band"], -1)
    t0 = time.perf_counter()
    E_vca = np.clip(vca(flat, R, seed=seed)[0], 0, None)
    t_vca = time.perf_counter() - t0
    out: dict[str, dict] = {}
    for name, call in (("fcls", lambda: cube.unmix.fcls(E_vca, tol=1e-6, max_iter=2000)),
                       ("sunsal", lambda: cube.unmix.sunsal(E_vca, lam=1e-4, asc=False, tol=1e-6,
                                                            max_iter=2000))):
        if name in methods:
            t0 = time.perf_counter()
            with _Counter() as c:
                A = call()
            r, s = _score(A.values, E_vca, sc)
            out[name] = dict(armse=r, msad=s, time=t_vca + time.perf_counter() - t0, warn=c.n, unconv=0)
    deq, fit = opts["deq"], opts["fit"]
    if "deq0" in methods:
        out["deq0"] = _deq_unsup(sc, E_vca, seed, deq, fit, train=False)
    if "nocnn" in methods:
        out["nocnn"] = _deq_unsup(sc, E_vca, seed, {**deq, "use_cnn": False}, fit, train=True)
    if "deq" in methods:
        out["deq"] = _deq_unsup(sc, E_vca, seed, deq, fit, train=True)
    if "deq_sp" in methods:  # issue 16's superpixel-guided prox (trial; needs scikit-image)
        from trial_superpixel_prox import DEQSuperpixel

        out["deq_sp"] = _deq_unsup(sc, E_vca, seed, {**deq, **opts.get("sp", {})}, fit, train=True,
                                   cls=DEQSuperpixel)
    return out


def _supervised(sc: dict[str, Any], seed: int, methods: list[str], opts: dict) -> dict[str, dict]:
    from xr_unmix.models.deq import DEQUnmix
    from xr_unmix.models.uadmm import UADMMNet

    cube, E, R = sc["cube"], sc["E"], sc["E"].shape[1]
    Y = cube.values.reshape(cube.sizes["band"], -1).T.astype(np.float64)
    T = sc["truth"].reshape(R, -1).T
    valid = np.flatnonzero(np.isfinite(Y).all(1))
    perm = np.random.default_rng(seed).permutation(valid)
    tr, te = perm[:N_LABELLED], perm[N_LABELLED:]
    out: dict[str, dict] = {}

    def run(name: str, make: Any) -> None:
        t0 = time.perf_counter()
        with _Counter() as c:
            A = make()
        r, s = _score(A.values, E, sc, te)
        out[name] = dict(armse=r, msad=s, time=time.perf_counter() - t0, warn=c.n,
                         unconv=int(A.attrs.get("solver_n_unconverged", 0)))

    def uadmm() -> Any:
        net = UADMMNet.from_endmembers(E)
        net.fit(Y[tr], T[tr], seed=seed, progress=False)
        return cube.unmix.admm(net)

    def deq() -> Any:
        model = DEQUnmix.from_endmembers(E, seed=seed, **{**SUP_DEQ, **opts["deq_sup"]})
        model.fit(Y[tr].astype(np.float32), T[tr], seed=seed, progress=False, **opts["fit_sup"])
        return cube.unmix.deq(model)

    for name, make in (("sup_fcls", lambda: cube.unmix.fcls(E, tol=1e-6, max_iter=2000)),
                       ("sup_uadmm", uadmm), ("sup_deq", deq)):
        if name in methods:
            run(name, make)
    return out


def one_job(scene: str, seed: int, methods: list[str], opts: dict) -> dict[str, Any]:
    """Every requested method on ``scene`` with ``seed``; ``{"skip": reason}`` when the data are absent."""
    import _eval_scenes as S
    import torch

    torch.set_num_threads(1)
    try:
        sc = S.load(scene, opts["size"])
    except FileNotFoundError as exc:
        return {"scene": scene, "seed": seed, "skip": str(exc)}
    res = {"scene": scene, "seed": seed, "what": sc["what"]}
    res.update(_unsupervised(sc, seed, methods, opts))
    res.update(_supervised(sc, seed, methods, opts))
    return res


class _Serial:
    """In-process stand-in for a process pool (``--workers 1``)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Any, *its: Any) -> Any:
        return map(fn, *its)


def main(argv: list[str] | None = None) -> int:
    from _eval_report import parse_args, print_report

    a, scenes, seeds, methods, opts = parse_args(argv)
    t0 = time.perf_counter()
    if a.load:  # a table from saved jobs (e.g. of an interrupted run): the requested scenes/seeds found
        res = [json.loads(ln) for f in a.load for ln in Path(f).read_text(encoding="utf-8").splitlines()]
        merged: dict[tuple, dict] = {}  # runs with different --methods: one record per (scene, seed)
        for r in res:
            if r["scene"] in scenes and r["seed"] in seeds:
                merged.setdefault((r["scene"], r["seed"]), {}).update(r)
        res = list(merged.values())
        print_report(res, scenes, sorted({r["seed"] for r in res}) or seeds, methods, opts, a, 0.0)
        return 0
    jobs = [(sc, s) for sc in scenes for s in seeds]
    res = []
    with ProcessPoolExecutor(a.workers) if a.workers > 1 else _Serial() as ex:
        for r in ex.map(one_job, *zip(*jobs, strict=True), [methods] * len(jobs), [opts] * len(jobs)):
            res.append(r)
            if a.save:  # one JSON line per finished job: partial results survive an interrupted run
                with open(a.save, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(r) + "\n")
            print(f"[{time.perf_counter() - t0:.0f} s] {len(res)}/{len(jobs)} done: {r['scene']} seed "
                  f"{r['seed']}", file=sys.stderr, flush=True)
    print_report(res, scenes, seeds, methods, opts, a, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
