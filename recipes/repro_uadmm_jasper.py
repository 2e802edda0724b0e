"""Reproduce the U-ADMM-AENet paper's Jasper Ridge table (sec. 5.2, Table 1) and abundance maps (Fig. 3).

Data: read at run time from ``../shared/data/jasper_ridge`` (or ``$XR_UNMIX_DATA``) through
:func:`xr_unmix.datasets.load_jasper_ridge`; nothing of the data set is in this file or the repository
(``PAPER`` below holds the paper's published RMSE figures, quoted for comparison).

Protocol: the 100 x 100 Jasper Ridge crop (198 bands, reflectance = DN / max), its four reference
endmembers (tree, water, soil, road) and reference abundances. For each seed, 256 pixels drawn at random
are the training set and the other 9744 pixels the test set. Methods:

- SUnSAL: ``sunsal_solve`` with the reference endmembers, ``lam = 0``, ANC + ASC (FCLS), run to tolerance;
- MNN-AE-2: ``MNNAE.from_endmembers(E, layers=2)`` trained with MSE, Adam lr 1e-4, batch 64, 300 epochs;
- U-ADMM-AENet (paper settings): ``UADMMNet.from_endmembers(E, layers=2)`` trained with the composite loss
  (alphas 1, 1e-7, 1e-5), Adam lr 1e-4, batch 64, 300 epochs;
  ``W`` trained directly (``optimizer="adam", subspace=None, ridge=0``);
- U-ADMM-AENet (package defaults): ``UADMMNet.from_endmembers(E)`` then ``fit(Y, A, seed=s)`` (full-batch
  L-BFGS, 500 iterations, ``W`` trained in the whitened 6-dim singular subspace of the training spectra,
  ridge 1e-3);
- U-ADMM-AENet with the package's previous defaults (Adam lr 1e-3, batch 64, 300 epochs, ``W`` directly);
- the package defaults with 4 layers instead of 2 (not in the paper).

RMSE is :func:`xr_unmix.metrics.rmse`: ``sqrt(mean((A_hat - A)^2))`` over every (endmember, test pixel)
entry (the headline). An extra column gives the mean over endmembers of the per-endmember RMSE
(``mean_j sqrt(mean_i (A_hat_ij - A_ij)^2)``), another reading of the paper's "Averaged RMSE". Prints a markdown table (mean +- std over seeds, training time) and saves
``docs/figures/uadmm_jasper_maps.png`` (not committed; maps over the whole scene through ``cube.unmix.admm``, seed 0).

Usage: ``python recipes/repro_uadmm_jasper.py [--seeds 5] [--epochs 300] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import xr_unmix
from xr_unmix.datasets import load_jasper_ridge
from xr_unmix.metrics import rmse
from xr_unmix.models.uadmm import MNNAE, PAPER_LR, UADMMNet
from xr_unmix.solvers.sunsal import sunsal_solve

ROOT = Path(__file__).resolve().parents[1]
FIG = ROOT / "docs" / "figures"
PAPER = {"SUnSAL": 0.0612, "MNN-AE-2": 0.1262, "U-ADMM-AENet (paper settings)": 0.0214,
         "U-ADMM-AENet (package defaults)": 0.0214,
         "U-ADMM-AENet (previous defaults: Adam lr 1e-3, 300 epochs)": "-",
         "U-ADMM-AENet, 4 layers (defaults otherwise)": "-"}
ADAM_W = dict(optimizer="adam", subspace=None, ridge=0.0)  # W trained directly, as in the paper


def rmse_per_endmember(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean over endmembers of each endmember's RMSE over pixels; ``pred``, ``ref`` are (pixels, R)."""
    return float(np.mean(np.sqrt(np.mean((pred - ref) ** 2, axis=0))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=300, help="epochs of the paper-settings runs")
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny matrices: 1 is fastest)")
    ap.add_argument("--no-figure", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cube, E, A = load_jasper_ridge()
    nb, h, w = cube.shape
    Y = cube.values.reshape(nb, -1).T.astype(np.float64)  # (n, bands)
    At = A.values.reshape(A.shape[0], -1).T  # (n, R)
    n = Y.shape[0]

    results: dict[str, list[float]] = {k: [] for k in PAPER}
    times: dict[str, list[float]] = {k: [] for k in PAPER}
    train_fit: dict[str, list[float]] = {k: [] for k in PAPER}  # RMSE on the 256 training pixels
    per_em: dict[str, list[float]] = {k: [] for k in PAPER}  # mean of per-endmember test RMSEs
    models: dict[str, object] = {}
    for seed in range(args.seeds):
        perm = np.random.default_rng(seed).permutation(n)
        tr, te = perm[: args.n_train], perm[args.n_train:]

        t0 = time.perf_counter()
        s = sunsal_solve(Y[te].T, E.values, lam=0.0, anc=True, asc=True, tol=1e-6, max_iter=5000,
                         dtype=torch.float64, warn=False)
        times["SUnSAL"].append(time.perf_counter() - t0)  # solve time on the test pixels, no training
        results["SUnSAL"].append(rmse(s.numpy(), At[te].T))
        per_em["SUnSAL"].append(rmse_per_endmember(s.numpy().T, At[te]))
        s_tr = sunsal_solve(Y[tr].T, E.values, lam=0.0, tol=1e-6, max_iter=5000, dtype=torch.float64,
                            warn=False)
        train_fit["SUnSAL"].append(rmse(s_tr.numpy(), At[tr].T))

        runs = {
            "MNN-AE-2": (MNNAE.from_endmembers(E, layers=2),
                         dict(epochs=args.epochs, lr=PAPER_LR, batch_size=64, **ADAM_W)),
            "U-ADMM-AENet (paper settings)": (UADMMNet.from_endmembers(E, layers=2),
                                              dict(epochs=args.epochs, lr=PAPER_LR, batch_size=64, **ADAM_W)),
            "U-ADMM-AENet (package defaults)": (UADMMNet.from_endmembers(E), {}),
            "U-ADMM-AENet (previous defaults: Adam lr 1e-3, 300 epochs)": (
                UADMMNet.from_endmembers(E), dict(epochs=300, lr=1e-3, batch_size=64, **ADAM_W)),
            "U-ADMM-AENet, 4 layers (defaults otherwise)": (UADMMNet.from_endmembers(E, layers=4), {}),
        }
        for name, (net, kw) in runs.items():
            hist = net.fit(Y[tr], At[tr], seed=seed, progress=False, **kw)
            times[name].append(hist["time_s"])
            pred = net.predict(Y[te])
            results[name].append(rmse(pred.T, At[te].T))
            per_em[name].append(rmse_per_endmember(pred, At[te]))
            train_fit[name].append(rmse(net.predict(Y[tr]).T, At[tr].T))
            if seed == 0:
                models[name] = net
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in results.items()), flush=True)

    print(f"\nJasper Ridge, {args.n_train} training pixels, {n - args.n_train} test pixels, "
          f"{args.seeds} seeds (splits), torch threads {args.threads}\n")
    print("| method | test RMSE (mean ± std) | per-seed test RMSE | RMSE on the training pixels | "
          "mean per-endmember test RMSE (alt.) | train time per run (s) | paper |")
    print("|---|---|---|---|---|---|---|")
    for k, v in results.items():
        t = np.mean(times[k])
        tlabel = f"{t:.1f}" if k != "SUnSAL" else f"({t:.1f} solve)"
        print(f"| {k} | {np.mean(v):.4f} ± {np.std(v):.4f} | {', '.join(f'{x:.4f}' for x in v)} | "
              f"{np.mean(train_fit[k]):.4f} | {np.mean(per_em[k]):.4f} ± {np.std(per_em[k]):.4f} | "
              f"{tlabel} | {PAPER[k]} |")
    if args.json:
        args.json.write_text(json.dumps({"rmse": results, "train_rmse": train_fit, "time_s": times,
                                         "rmse_per_endmember_mean": per_em}, indent=1))

    if not args.no_figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        maps = {
            "SUnSAL": cube.unmix.sunsal(E, lam=0.0, tol=1e-6, max_iter=5000),
            "MNN-AE-2": xr_unmix.apply_model(cube, models["MNN-AE-2"], method="mnnae"),
            "U-ADMM-AENet": cube.unmix.admm(models["U-ADMM-AENet (package defaults)"]),
            "Reference": A,
        }
        names = list(A.endmember.values)
        fig, axes = plt.subplots(len(names), len(maps), figsize=(2.2 * len(maps), 2.2 * len(names)))
        for j, (title, m) in enumerate(maps.items()):
            for i, em in enumerate(names):
                ax = axes[i, j]
                ax.imshow(np.asarray(m.sel(endmember=em).values), vmin=0, vmax=1, cmap="viridis")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    r = "" if title == "Reference" else f"\nRMSE {rmse(m, A):.4f}"
                    ax.set_title(title + r, fontsize=9)
                if j == 0:
                    ax.set_ylabel(em)
        fig.suptitle("Jasper Ridge abundances (seed 0 models, whole scene)", fontsize=10)
        fig.tight_layout()
        FIG.mkdir(parents=True, exist_ok=True)
        out = FIG / "uadmm_jasper_maps.png"
        fig.savefig(out, dpi=110)
        print(f"\nsaved {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
