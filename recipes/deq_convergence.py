"""Convergence of the DEQ-Unmix forward solve: residual vs. iteration, Anderson vs. plain iteration,
before and after training (Jasper Ridge, seed-0 VCA endmembers).

Four operators: projected gradient descent (step 1/L) on the data term, untrained and trained
(``--pgd-model FILE``, else trained here with the ``fit_scene`` defaults), and the preconditioned operator
(``precondition=--precondition``, default 1e-3: a damped constrained Newton step), untrained and trained
(``--model FILE`` from ``deq_jasper.py --save-model``, else trained here). For each, also the spectral
radius of the Jacobian at the equilibrium (power iteration).
Each is solved on the whole scene from the FCLS start (what ``cube.unmix.deq`` does) and from the
uniform start ``A = 1/R`` (a hard start: VCA endmembers on Jasper have a Gram condition number in the
thousands), by Anderson acceleration (m = 5, lam = 1e-4) and by plain iteration, for a fixed number of
iterations (tol = 0). The residual is the relative ``||f(A) - A|| / ||f(A)||``.
Writes docs/figures/deq_convergence.png.

Run: ``python recipes/deq_convergence.py [--model FILE] [--iters 300]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--pgd-model", default=None)
    ap.add_argument("--precondition", type=float, default=1e-3)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=200)
    a = ap.parse_args()
    import torch

    from _deq_common import FIG_DIR, jasper, setup

    from xr_unmix.models.base import load_model
    from xr_unmix.models.deq import DEQUnmix

    setup()
    Y, _, _, cube, E = jasper(0)
    def get(path: str | None, precondition: float) -> DEQUnmix:
        if path:
            return load_model(path)
        m = DEQUnmix.from_endmembers(E, seed=0, precondition=precondition)
        m.fit_scene(cube, epochs=a.epochs, seed=0, progress=False, discrepancy=None)
        return m

    models = {
        "untrained PGD": DEQUnmix.from_endmembers(E, seed=0),
        "trained PGD": get(a.pgd_model, 0.0),
        "untrained precond.": DEQUnmix.from_endmembers(E, seed=0, precondition=a.precondition),
        "trained precond.": get(a.model, a.precondition),
    }
    Et = models["untrained PGD"].endmember_matrix().detach().double()
    print(f"Gram condition number of the VCA endmembers: {float(torch.linalg.cond(Et.T @ Et)):.0f}")
    Yt = torch.as_tensor(Y)[None]
    traces = {}
    rhos = {}
    with torch.no_grad():
        for mname, m in models.items():
            rhos[mname] = m.spectral_radius(Yt, iters=60)
            fc = m.init_abundances(Yt)
            uni = torch.full_like(fc, 1.0 / m.n_endmembers)
            for sname, A0 in (("FCLS start", fc), ("uniform start", uni)):
                for solver in ("anderson", "plain"):
                    m(Yt, A0=A0, max_iter=a.iters, tol=0.0, solver=solver, warn=False)
                    traces[(mname, sname, solver)] = m.last_info.residuals[:, 0].numpy()

    def first_below(t: np.ndarray, thr: float) -> str:
        i = np.nonzero(t <= thr)[0]
        return str(int(i[0]) + 1) if i.size else f">{len(t)}"

    print("spectral radius of the Jacobian at the equilibrium: "
          + "; ".join(f"{k} {v:.3f}" for k, v in rhos.items()))
    print("| operator | start | solver | residual at 1 | at 10 | at 100 | at end | min | "
          "iterations to 1e-4 | to 1e-6 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (mname, sname, solver), t in traces.items():
        print(f"| {mname} | {sname} | {solver} | {t[0]:.1e} | {t[min(9, len(t) - 1)]:.1e} | "
              f"{t[min(99, len(t) - 1)]:.1e} | {t[-1]:.1e} | {t.min():.1e} | {first_below(t, 1e-4)} | "
              f"{first_below(t, 1e-6)} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey=True)
    for ax, mname in zip(axes.flat, models, strict=True):
        for (mn, sname, solver), t in traces.items():
            if mn != mname:
                continue
            ax.semilogy(np.arange(1, len(t) + 1), np.maximum(t, 1e-12),
                        "-" if solver == "anderson" else "--",
                        color="C0" if sname == "FCLS start" else "C1", label=f"{solver}, {sname}")
        ax.set_title(f"{mname} operator, Jasper Ridge (rho {rhos[mname]:.3f})", fontsize=9)
        ax.set_xlabel("iteration")
        ax.axhline(models[mname].config["tol"], color="grey", lw=0.6)
    for ax in axes[:, 0]:
        ax.set_ylabel("relative residual ||f(A)-A|| / ||f(A)||")
    axes[0, 1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FIG_DIR / "deq_convergence.png", dpi=120)
    print(f"wrote {FIG_DIR / 'deq_convergence.png'}")


if __name__ == "__main__":
    main()
