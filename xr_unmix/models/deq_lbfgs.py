"""Full-batch L-BFGS for :meth:`DEQUnmix.fit <xr_unmix.DEQUnmix.fit>` (``optimizer="lbfgs"``).

One run of ``torch.optim.LBFGS.step`` on the shared loop (:func:`xr_unmix.models.training.train_loop`,
one "epoch"): every loss evaluation solves the forward problem from FCLS to a tight tolerance and the
implicit backward too, so that the loss is a smooth function of the parameters; each evaluation whose
solve converged is a keep-best candidate (the start always is).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from .training import Diverged, Epoch, KeepBest, train_loop


def fit_lbfgs(model: Any, Y: torch.Tensor, A: torch.Tensor, M: torch.Tensor, Ys: torch.Tensor,
              A0: torch.Tensor, groups: list[dict], *, epochs: int, lr: float, weight_decay: float,
              ridge: float, solve_tol: float, solve_max_iter: int, b_tol: float, b_max_iter: int,
              seed: int | None, progress: bool | None) -> dict[str, Any]:
    """See :meth:`DEQUnmix.fit`; ``Y``/``A``/``M``: data, labels, labelled mask; ``A0``: FCLS start."""
    params = [p for g in groups for p in g["params"]]
    shift = {id(p) for p in (model.V, model.Vc) if p is not None}
    decay = [p for p in params if id(p) not in shift and p is not model.E]
    opt = torch.optim.LBFGS(params, lr=float(lr), max_iter=max(int(epochs), 1),
                            max_eval=max(int(epochs * 1.25), 1), history_size=50,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                            tolerance_change=1e-14)
    rec: dict[str, list[float]] = {"loss": [], "residual": [], "objective": []}
    best_i = {"i": 0}
    saved = model.solver

    def step(epoch: int, guard: KeepBest) -> Epoch:
        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            pred = model(Y, A0=A0, max_iter=int(solve_max_iter), tol=float(solve_tol), warn=False)
            res = model.last_info.max_residual
            loss = sq_error(pred, A, M).mean()
            obj = loss + ridge * ridge_penalty(model, Ys) if ridge else loss
            if weight_decay and decay:
                obj = obj + weight_decay * sum(p.pow(2).sum() for p in decay)
            lv, ov = float(loss.detach()), float(obj.detach())
            if not (math.isfinite(lv) and math.isfinite(ov)):
                raise Diverged(f"training loss became {lv} (L-BFGS evaluation {len(rec['loss'])})")
            i = len(rec["loss"])
            if guard.consider(ov, i, eligible=res <= 10 * float(solve_tol) or i == 0):
                best_i["i"] = i
            rec["loss"].append(lv)
            rec["objective"].append(ov)
            rec["residual"].append(res)
            obj.backward()
            return obj

        opt.step(closure)  # one call runs all the iterations (as U-ADMM-AENet's training)
        return Epoch(guard.best_loss, eligible=False)  # the evaluations were scored in the closure

    model.solver = dataclasses.replace(saved, b_tol=float(b_tol), b_max_iter=int(b_max_iter))
    try:
        hist = train_loop(model, step, epochs=1, tensors=params, seed=seed, desc="DEQUnmix.fit",
                          progress=progress)
    finally:
        model.solver = saved
    best = best_i["i"]
    hist.update(rec, optimizer="lbfgs", best_epoch=best, best_objective=hist["best_loss"],
                best_loss=rec["loss"][best] if rec["loss"] else math.nan, evals=len(rec["loss"]),
                epochs=epochs)
    return hist


def sq_error(pred: torch.Tensor, A: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Squared abundance error per labelled pixel (summed over endmembers)."""
    err = (pred - A).pow(2).sum(1)
    return err[M] if pred.ndim == 4 else err


def ridge_penalty(self: Any, Ys: torch.Tensor) -> torch.Tensor:
    """``mean_i ||V y_i||^2`` over the spectra ``Ys`` (n, bands)."""
    return (Ys @ self.target_shift().T).pow(2).sum(1).mean()
