"""Jasper Ridge, unsupervised: DEQ-Unmix from VCA endmembers vs. VCA+FCLS and VCA+SUnSAL (+ ablation).

Data: read at run time from ``../shared/data/jasper_ridge`` (or ``$XR_UNMIX_DATA``) through
:func:`xr_unmix.datasets.load_jasper_ridge`; nothing of the data set is in this file or the repository.

For each seed: VCA (seeded) gives 4 endmembers (clipped >= 0). Baselines: FCLS with them, and SUnSAL
(ANC only, l1 weight 1e-4: with ASC the l1 term is constant). DEQ-Unmix: ``DEQUnmix.from_endmembers(E_vca,
seed=s, precondition=P)`` (``--precondition``, default 1e-3: the damped constrained Newton step; 0 = the
projected-gradient operator, the package default) then ``fit_scene(cube, seed=s)`` with the package's
``fit_scene`` defaults (docs/deq.md lists them). Also reported: the same operator untrained (no CNN
contribution, VCA endmembers), and the ablation: the same training with ``use_cnn=False`` (only the
endmembers learn). Scores: abundance aRMSE against the reference labelling and endmember mSAD (radians),
after pairing the estimated endmembers with the reference ones by the Hungarian method on spectral angle
(:func:`xr_unmix.metrics.match`); the DEQ's own refined endmembers are paired for the DEQ. Prints a
markdown table (per seed, then median / mean +- std) and writes docs/figures/deq_jasper.png (abundance
maps, seed 0; not committed) and, with ``--save-model``, the seed-0 model.

Run: ``python recipes/deq_jasper.py [--seeds 3] [--epochs 200] [--workers 2]``
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def one_seed(seed: int, epochs: int, save: str | None, precondition: float = 1e-3) -> dict:
    import torch

    from _deq_common import jasper, setup

    from xr_unmix.metrics import match, rmse
    from xr_unmix.models.deq import DEQUnmix
    from xr_unmix.solvers.sunsal import fcls, sunsal_solve

    setup()
    Y, E_ref, A_ref, cube, E = jasper(seed)
    b, H, W = Y.shape
    flat = Y.reshape(b, -1)
    out: dict = {"seed": seed}
    m0 = match(E, E_ref)
    A_f = fcls(flat, E, tol=1e-6, max_iter=2000, warn=False).numpy().reshape(4, H, W)
    out["VCA+FCLS"] = (rmse(m0.reorder_abundances(A_f), A_ref), m0.mean_sad)
    A_s = sunsal_solve(flat, E, lam=1e-4, anc=True, asc=False, tol=1e-6, max_iter=2000,
                       warn=False).numpy().reshape(4, H, W)
    out["VCA+SUnSAL"] = (rmse(m0.reorder_abundances(A_s), A_ref), m0.mean_sad)
    maps = {"reference": A_ref, "VCA+FCLS": m0.reorder_abundances(A_f)}
    pre = {"precondition": precondition}
    m_u = DEQUnmix.from_endmembers(E, seed=seed, **pre)
    with torch.no_grad():
        A_u = m_u.unmix_image(torch.as_tensor(Y)).numpy()
    out["untrained operator"] = (rmse(m0.reorder_abundances(A_u), A_ref), m0.mean_sad)
    for name, kw in (("DEQ-Unmix", {}), ("ablation: analytic G (no CNN)", {"use_cnn": False})):
        model = DEQUnmix.from_endmembers(E, seed=seed, **pre, **kw)
        t0 = time.perf_counter()
        hist = model.fit_scene(cube, epochs=epochs, seed=seed, progress=False)
        t = time.perf_counter() - t0
        with torch.no_grad():
            A_d = model.unmix_image(torch.as_tensor(Y)).numpy()
        info = model.last_info
        Ed = model.endmember_matrix().detach().numpy()
        md = match(Ed, E_ref)
        out[name] = (rmse(md.reorder_abundances(A_d), A_ref), md.mean_sad)
        out[name + " info"] = dict(time_s=t, best_epoch=hist["best_epoch"], initial=hist["initial_loss"],
                                   best=hist["best_loss"], iters=info.n_iter, residual=info.max_residual,
                                   rho=model.spectral_radius(torch.as_tensor(Y)[None], iters=60))
        if name == "DEQ-Unmix":
            maps[name] = md.reorder_abundances(A_d)
            if save and seed == 0:
                model.save(save)
    out["maps"] = maps if seed == 0 else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--save-model", default=None)
    ap.add_argument("--precondition", type=float, default=1e-3)
    a = ap.parse_args()
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.workers) as ex:
        res = list(ex.map(one_seed, range(a.seeds), [a.epochs] * a.seeds, [a.save_model] * a.seeds,
                          [a.precondition] * a.seeds))
    methods = ["VCA+FCLS", "VCA+SUnSAL", "untrained operator", "DEQ-Unmix", "ablation: analytic G (no CNN)"]
    print(f"Jasper Ridge, {a.seeds} seeds, {a.epochs} epochs, precondition {a.precondition:g}, wall "
          f"{time.perf_counter() - t0:.0f} s ({a.workers} worker processes, 1 torch thread each, shared machine)")
    print("| seed | " + " | ".join(f"{m} aRMSE / mSAD" for m in methods) + " | DEQ aRMSE vs FCLS |")
    print("|---|" + "---|" * (len(methods) + 1))
    gains = []
    for r in res:
        g = 1 - r["DEQ-Unmix"][0] / r["VCA+FCLS"][0]
        gains.append(g)
        print(f"| {r['seed']} | " + " | ".join(f"{r[m][0]:.4f} / {r[m][1]:.4f}" for m in methods)
              + f" | {-100 * g:+.1f} % |")
    for lab, fn in (("median", np.median), ("mean", np.mean), ("std", np.std)):
        print(f"| {lab} | " + " | ".join(
            f"{fn([r[m][0] for r in res]):.4f} / {fn([r[m][1] for r in res]):.4f}" for m in methods)
            + f" | {-100 * fn(gains):+.1f} % |")
    print("training (per seed): " + "; ".join(
        f"seed {r['seed']}: DEQ {r['DEQ-Unmix info']['time_s']:.0f} s, best epoch "
        f"{r['DEQ-Unmix info']['best_epoch']}, objective {r['DEQ-Unmix info']['initial']:.4f} -> "
        f"{r['DEQ-Unmix info']['best']:.4f}, inference {r['DEQ-Unmix info']['iters']} it, residual "
        f"{r['DEQ-Unmix info']['residual']:.1e}, spectral radius {r['DEQ-Unmix info']['rho']:.3f}"
        for r in res))
    ok_every = all(r["DEQ-Unmix"][0] < r["VCA+FCLS"][0] for r in res)
    ok_sad = all(r["DEQ-Unmix"][1] <= r["VCA+FCLS"][1] + 0.01 for r in res)
    cnn_gain = [1 - r["DEQ-Unmix"][0] / r["untrained operator"][0] for r in res]
    print("DEQ-Unmix aRMSE vs the untrained operator (what training adds): "
          + ", ".join(f"{-100 * g:+.1f} %" for g in cnn_gain))
    print(f"criteria: lower aRMSE than VCA+FCLS in every seed: {ok_every}; median reduction "
          f"{100 * np.median(gains):.1f} % (>= 30 %: {np.median(gains) >= 0.3}); "
          f"mSAD <= VCA's + 0.01 in every seed: {ok_sad}")
    maps = next(r["maps"] for r in res if r["maps"] is not None)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from _deq_common import FIG_DIR

    names = ["tree", "water", "soil", "road"]
    fig, axes = plt.subplots(len(maps), 4, figsize=(8, 2 * len(maps)))
    for i, (k, A) in enumerate(maps.items()):
        for j in range(4):
            axes[i, j].imshow(A[j], vmin=0, vmax=1, cmap="viridis")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(names[j])
        axes[i, 0].set_ylabel(k, fontsize=8)
    fig.suptitle("Jasper Ridge abundances, seed 0 (endmembers matched to the reference)")
    fig.tight_layout()
    fig.savefig(FIG_DIR / "deq_jasper.png", dpi=110)
    print(f"wrote {FIG_DIR / 'deq_jasper.png'}")


if __name__ == "__main__":
    main()
