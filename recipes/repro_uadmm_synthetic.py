"""Reproduce the U-ADMM-AENet paper's synthetic experiment (sec. 5.1, Fig. 2).

Data (``xr_unmix.simulate(..., spatial=True)``): 6 endmembers drawn at random from the USGS library
(``load_usgs_library("pruned_10_deg")``, 224 bands), a 100 x 100 image of 100 disjoint 10 x 10 patches each
mixing two random endmembers at [0.8, 0.2], an 11 x 11 Gaussian filter (sigma 2 px; the paper does not
give sigma), abundances rescaled to sum to one, white Gaussian noise at SNR 15 dB. Training pixels are
drawn at random; every other pixel is the test set.

Networks (paper settings): 2 layers, Adam lr 1e-4, batch 64; U-ADMM-AENet with the composite loss
(alphas 1, 1e-7, 1e-5), MNN-AE-2 with MSE; both warm-started from the true endmembers.

- (a) test RMSE vs. training epochs (0..``--epochs-a``) with 1000 training pixels;
- (b) test RMSE vs. training-set size (256 .. 4096) after ``--epochs-b`` epochs.

RMSE is :func:`xr_unmix.metrics.rmse` (over every endmember and test pixel). Prints both tables (markdown)
and saves ``docs/figures/uadmm_synthetic_epochs.png`` and ``docs/figures/uadmm_synthetic_size.png``.

Usage: ``python recipes/repro_uadmm_synthetic.py [--seeds 1] [--epochs-a 500] [--epochs-b 300]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from xr_unmix.datasets import load_usgs_library
from xr_unmix.metrics import rmse
from xr_unmix.models.uadmm import MNNAE, PAPER_LR, UADMMNet
from xr_unmix.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
FIG = ROOT / "docs" / "figures"
NETS = {"U-ADMM-AENet": UADMMNet, "MNN-AE-2": MNNAE}


#: the paper's training: Adam on mini-batches, W trained directly (not the UADMMNet.fit defaults)
PAPER_FIT = dict(optimizer="adam", subspace=None, ridge=0.0)

def scene(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(E (bands, 6), spectra (10000, bands), abundances (10000, 6)) of one synthetic scene."""
    lib = load_usgs_library("pruned_10_deg")
    rng = np.random.default_rng(seed)
    E = lib.isel(endmember=np.sort(rng.choice(lib.sizes["endmember"], 6, replace=False)))
    Y, A = simulate(E, 100 * 100, spatial=True, image_shape=(100, 100), patch=10, fractions=(0.8, 0.2),
                    smooth_size=11, smooth_sigma=2.0, snr_db=15.0, seed=rng)
    return E.values, Y.astype(np.float64), A.astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=1, help="scenes (endmember draws, noise, split) for (a)")
    ap.add_argument("--epochs-a", type=int, default=500)
    ap.add_argument("--every", type=int, default=25, help="evaluate every N epochs in (a)")
    ap.add_argument("--epochs-b", type=int, default=300)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    ap.add_argument("--seeds-b", type=int, default=1, help="scenes used for (b)")
    ap.add_argument("--lr", type=float, default=PAPER_LR)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    # (a) RMSE vs epochs
    curves: dict[str, list[list[float]]] = {k: [] for k in NETS}
    t_fit: dict[str, list[float]] = {k: [] for k in NETS}
    for seed in range(args.seeds):
        E, Y, A = scene(seed)
        perm = np.random.default_rng(1000 + seed).permutation(Y.shape[0])
        tr, te = perm[:1000], perm[1000:]
        Yte = torch.tensor(Y[te], dtype=torch.float32)
        for name, cls in NETS.items():
            net = cls.from_endmembers(E, layers=2)
            first = rmse(net.predict(Y[te]).T, A[te].T)

            def cb(epoch: int, model: torch.nn.Module) -> dict[str, float] | None:
                if epoch % args.every:
                    return None
                return {"test_rmse": rmse(model(Yte).double().numpy().T, A[te].T)}

            h = net.fit(Y[tr], A[tr], epochs=args.epochs_a, lr=args.lr, batch_size=64, seed=seed,
                        callback=cb, progress=False, **PAPER_FIT)
            curves[name].append([first, *h["test_rmse"]])
            t_fit[name].append(h["time_s"])
        print(f"(a) seed {seed}: " + ", ".join(f"{k} {v[-1][-1]:.4f}" for k, v in curves.items()),
              flush=True)
    epochs_axis = [0, *range(args.every, args.epochs_a + 1, args.every)]

    # (b) RMSE vs training-set size
    by_size: dict[str, dict[int, list[float]]] = {k: {s: [] for s in args.sizes} for k in NETS}
    for seed in range(args.seeds_b):
        E, Y, A = scene(seed)
        perm = np.random.default_rng(2000 + seed).permutation(Y.shape[0])
        for size in args.sizes:
            tr, te = perm[:size], perm[size:]
            for name, cls in NETS.items():
                net = cls.from_endmembers(E, layers=2)
                net.fit(Y[tr], A[tr], epochs=args.epochs_b, lr=args.lr, batch_size=64, seed=seed,
                        progress=False, **PAPER_FIT)
                by_size[name][size].append(rmse(net.predict(Y[te]).T, A[te].T))
            print(f"(b) seed {seed} size {size}: "
                  + ", ".join(f"{k} {v[size][-1]:.4f}" for k, v in by_size.items()), flush=True)

    print(f"\n(a) test RMSE vs epochs: 1000 training pixels, 9000 test pixels, SNR 15 dB, lr {args.lr}, "
          f"batch 64, mean over {args.seeds} scene(s)\n")
    show = [e for e in epochs_axis if e in (0, 25, 50, 100, 150, 200, 300, 400, 500) or e == epochs_axis[-1]]
    print("| epochs | " + " | ".join(NETS) + " |")
    print("|---|" + "---|" * len(NETS))
    for e in show:
        i = epochs_axis.index(e)
        print(f"| {e} | " + " | ".join(f"{np.mean([c[i] for c in curves[k]]):.4f}" for k in NETS) + " |")
    print("\ntraining time for (a), s per run: "
          + ", ".join(f"{k} {np.mean(v):.1f}" for k, v in t_fit.items()))
    print(f"\n(b) test RMSE vs training-set size: {args.epochs_b} epochs, mean over {args.seeds_b} scene(s)\n")
    print("| training pixels | " + " | ".join(NETS) + " |")
    print("|---|" + "---|" * len(NETS))
    for s in args.sizes:
        print(f"| {s} | " + " | ".join(f"{np.mean(by_size[k][s]):.4f}" for k in NETS) + " |")
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s (torch threads {args.threads})")
    if args.json:
        args.json.write_text(json.dumps({"epochs": epochs_axis, "curves": curves,
                                         "by_size": {k: {str(s): v for s, v in d.items()}
                                                     for k, d in by_size.items()}}, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIG.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for k in NETS:
        c = np.array(curves[k])
        ax.plot(epochs_axis, c.mean(0), marker="o", ms=3, label=k)
    ax.set_xlabel("training epochs")
    ax.set_ylabel("test RMSE")
    ax.set_yscale("log")
    ax.set_title(f"(a) RMSE vs epochs (1000 px, 15 dB, {args.seeds} scene(s))", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(FIG / "uadmm_synthetic_epochs.png", dpi=110)
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for k in NETS:
        ax.plot(args.sizes, [np.mean(by_size[k][s]) for s in args.sizes], marker="o", label=k)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training pixels")
    ax.set_ylabel("test RMSE")
    ax.set_title(f"(b) RMSE vs training size ({args.epochs_b} epochs)", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(FIG / "uadmm_synthetic_size.png", dpi=110)
    print("saved docs/figures/uadmm_synthetic_epochs.png, docs/figures/uadmm_synthetic_size.png")


if __name__ == "__main__":
    main()
