"""Jasper Ridge, supervised: DEQ-Unmix vs. U-ADMM-AENet with the same 256 labelled pixels.

Protocol of ``repro_uadmm_jasper.py``: the reference endmembers; for each seed, 256 pixels drawn at random
(``np.random.default_rng(seed).permutation``) are labelled, the other 9744 are the test set.

- U-ADMM-AENet: ``UADMMNet.from_endmembers(E)`` then ``fit(Y[train], A[train], seed=seed)`` (package
  defaults; pixel-wise, it only ever sees the 256 labelled spectra).
- DEQ-Unmix: ``DEQUnmix.from_endmembers(E, seed=seed, learn_endmembers=False, projection="scaled",
  precondition=1e-3, y_linear=True, kernel_size=1, hidden=128, y_features=16)``, ``fit(..., ridge=1e-3)``
  (defaults below, each a command-line option): the scaled linear mixing model, the damped Newton step, a learned ``R x bands`` shift ``V`` of the data term's target (zero at
  the start), a pixel-wise CNN (1x1 convolutions) that also sees a 16-channel learned projection of the
  spectra. A pixel-wise operator is trained on the 256 labelled spectra alone (one full batch per epoch);
  with ``--kernel-size 3`` it is trained on the whole image as one tile whose labels are NaN except at the
  training pixels (the CNN then sees unlabelled neighbours). AdamW lr 3e-3, ``--epochs`` (default 1000),
  every training solve run to the model's tolerance (``train_max_iter=None``: with 10 warm-started
  iterations the trained operator's equilibrium drifted away from what training saw). The previous
  setting (PGD operator, 3x3 CNN with 16 channels, ``y_features=8``, lr 1e-3, 200 epochs) is
  ``--precondition 0 --y-linear 0 --kernel-size 3 --hidden 16 --y-features 8 --lr 1e-3 --epochs 200``.

Current defaults (chosen on seeds 10-13, away from the reported seeds): ``projection="scaled"`` -- the
scaled linear mixing model, equilibrium over ``z = s a >= 0`` and abundances ``z / sum z``, brightness-
invariant like U-ADMM-AENet's normalised output -- with ``--ridge 1e-3`` (on ``V y``) and no learned
metric. The previous defaults (simplex projection, ``metric=True``, no ridge) are ``--projection simplex
--metric 1 --ridge 0``. ``--optimizer lbfgs`` (full-batch L-BFGS, ``--lr 1 --weight-decay 0``) and
``--seed-offset`` (tune on other seeds) are options. See docs/deq.md for what each gave.

RMSE (:func:`xr_unmix.metrics.rmse`) on the test pixels; markdown table, mean +- std.

Run: ``python recipes/deq_supervised.py [--seeds 3] [--epochs 1000] [--workers 1] [options]``
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# DEQ-Unmix settings (command-line overridable); see the module docstring
PRECONDITION, Y_LINEAR, Y_FEATURES, USE_CNN, LR, WEIGHT_DECAY = 1e-3, 1, 16, 1, 3e-3, 1e-4
HIDDEN, KERNEL_SIZE, CNN_LAYERS, Y_SUBSPACE = 128, 1, 3, 0
METRIC, OPTIMIZER, RIDGE, PROJECTION, SCHEDULE = 0, "adam", 1e-3, "scaled", "none"
sys.path.insert(0, str(HERE))


def one_seed(seed: int, epochs: int, n_train: int, opts: dict) -> dict:
    import torch

    from _deq_common import jasper, setup

    from xr_unmix.errors import ConvergenceWarning
    from xr_unmix.metrics import rmse
    from xr_unmix.models.deq import DEQUnmix
    from xr_unmix.models.uadmm import UADMMNet
    from xr_unmix.solvers.sunsal import fcls

    setup()
    Y, E, A, _, _ = jasper(0)
    b, H, W = Y.shape
    n = H * W
    Yp = Y.reshape(b, -1).T.astype(np.float64)
    Ap = A.reshape(4, -1).T
    perm = np.random.default_rng(seed).permutation(n)
    tr, te = perm[:n_train], perm[n_train:]
    out: dict = {"seed": seed}
    A_f = fcls(Yp[te].T, E, tol=1e-6, max_iter=2000, warn=False, dtype=torch.float64).numpy()
    out["FCLS (reference E)"] = (rmse(A_f, Ap[te].T), 0.0)
    t0 = time.perf_counter()
    net = UADMMNet.from_endmembers(E)
    net.fit(Yp[tr], Ap[tr], seed=seed)
    with torch.no_grad():
        pred = net(torch.as_tensor(Yp[te], dtype=torch.float32)).numpy()
    out["U-ADMM-AENet"] = (rmse(pred.T, Ap[te].T), time.perf_counter() - t0)
    labels = np.full((1, 4, H * W), np.nan, dtype=np.float32)
    labels[0, :, tr] = Ap[tr]
    labels = labels.reshape(1, 4, H, W)
    t0 = time.perf_counter()
    deq = DEQUnmix.from_endmembers(E, seed=seed, learn_endmembers=False, y_features=opts["y_features"],
                                   y_linear=opts["y_linear"], precondition=opts["precondition"],
                                   use_cnn=opts["use_cnn"], hidden=opts["hidden"],
                                   kernel_size=opts["kernel_size"], cnn_layers=opts["cnn_layers"],
                                   y_subspace=opts["y_subspace"], metric=opts["metric"],
                                   projection=opts["projection"])
    fit_kw = dict(epochs=epochs, lr=opts["lr"], seed=seed, progress=False, train_max_iter=None,
                  weight_decay=opts["weight_decay"], optimizer=opts["optimizer"], ridge=opts["ridge"],
                  schedule=None if opts["schedule"] == "none" else opts["schedule"])
    if opts["kernel_size"] == 1:  # a pixel-wise operator: train on the labelled spectra alone (cheaper)
        hist = deq.fit(Yp[tr].astype(np.float32), Ap[tr], batch_size=n_train, **fit_kw)
    else:  # spatial: the whole image as one tile, NaN labels except at the training pixels
        hist = deq.fit(Y[None], labels, batch_size=1, **fit_kw)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        Ad = deq.unmix_image(torch.as_tensor(Y)).numpy().reshape(4, -1)
    out["DEQ-Unmix"] = (rmse(Ad[:, te], Ap[te].T), time.perf_counter() - t0)
    out["deq_info"] = (hist["best_epoch"], deq.last_info.n_iter, deq.last_info.max_residual)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-offset", type=int, default=0,
                    help="first seed (e.g. 10 to choose settings away from the reported seeds 0-2)")
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--precondition", type=float, default=PRECONDITION)
    ap.add_argument("--y-linear", type=int, default=Y_LINEAR)
    ap.add_argument("--y-features", type=int, default=Y_FEATURES)
    ap.add_argument("--use-cnn", type=int, default=USE_CNN)
    ap.add_argument("--lr", type=float, default=LR)
    ap.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY)
    ap.add_argument("--hidden", type=int, default=HIDDEN)
    ap.add_argument("--kernel-size", type=int, default=KERNEL_SIZE)
    ap.add_argument("--cnn-layers", type=int, default=CNN_LAYERS)
    ap.add_argument("--y-subspace", type=int, default=Y_SUBSPACE)
    ap.add_argument("--metric", type=int, default=METRIC)
    ap.add_argument("--optimizer", default=OPTIMIZER, choices=["adam", "lbfgs"])
    ap.add_argument("--ridge", type=float, default=RIDGE)
    ap.add_argument("--projection", default=PROJECTION, choices=["simplex", "scaled"])
    ap.add_argument("--schedule", default=SCHEDULE, choices=["none", "cosine"])
    a = ap.parse_args()
    opts = dict(precondition=a.precondition, y_linear=bool(a.y_linear), y_features=a.y_features,
                use_cnn=bool(a.use_cnn), lr=a.lr, weight_decay=a.weight_decay, hidden=a.hidden,
                kernel_size=a.kernel_size, cnn_layers=a.cnn_layers, y_subspace=a.y_subspace,
                metric=bool(a.metric), optimizer=a.optimizer, ridge=a.ridge,
                projection=a.projection, schedule=a.schedule)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.workers) as ex:
        res = list(ex.map(one_seed, range(a.seed_offset, a.seed_offset + a.seeds), [a.epochs] * a.seeds, [a.n_train] * a.seeds,
                          [opts] * a.seeds))
    methods = ["FCLS (reference E)", "U-ADMM-AENet", "DEQ-Unmix"]
    print(f"Jasper Ridge supervised, {a.n_train} labelled pixels, test RMSE on the other "
          f"{10000 - a.n_train}; {a.seeds} seeds, {a.epochs} epochs; DEQ options {opts}; "
          f"wall {time.perf_counter() - t0:.0f} s")
    print("| seed | " + " | ".join(methods) + " | train time U-ADMM / DEQ (s) | DEQ best epoch, inference it, residual |")
    print("|---|" + "---|" * (len(methods) + 2))
    for r in res:
        print(f"| {r['seed']} | " + " | ".join(f"{r[m][0]:.4f}" for m in methods)
              + f" | {r['U-ADMM-AENet'][1]:.0f} / {r['DEQ-Unmix'][1]:.0f} | {r['deq_info'][0]}, "
              f"{r['deq_info'][1]}, {r['deq_info'][2]:.1e} |")
    print("| mean +- std | " + " | ".join(
        f"{np.mean([r[m][0] for r in res]):.4f} +- {np.std([r[m][0] for r in res]):.4f}" for m in methods)
        + " | | |")
    wins = sum(r["DEQ-Unmix"][0] < r["U-ADMM-AENet"][0] for r in res)
    lower = np.mean([r["DEQ-Unmix"][0] for r in res]) < np.mean([r["U-ADMM-AENet"][0] for r in res])
    print(f"criterion: DEQ-Unmix mean RMSE lower than U-ADMM-AENet's: {bool(lower)}; "
          f"lower in {wins} of {len(res)} seeds")


if __name__ == "__main__":
    main()
