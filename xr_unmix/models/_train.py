"""A generic, model-agnostic supervised training loop (stable API, shared by the xr_unmix networks).

Public API
----------
:func:`fit_supervised` ``(model, inputs, targets, *, epochs, batch_size=64, lr=1e-4, loss=None, seed=None,
params=None, weight_decay=0.0, validation=None, callback=None, progress=None, desc=None,
schedule=None, optimizer="adam", penalty=None) -> dict``
    Adam on mini-batches of ``(inputs[i], targets[i])`` rows (or, ``optimizer="lbfgs"``, full-batch
    L-BFGS; ``penalty`` adds a regulariser to the loss). ``model`` is a :class:`torch.nn.Module` or
    any callable ``model(inputs_batch) -> predictions_batch`` (then pass ``params``). Returns the history
    dict described in :func:`fit_supervised`.

:func:`check_pairs` ``(spectra, abundances, *, n_bands, n_endmembers, sum_tol=1e-3, dtype, device)``
    Validates and converts labelled training pixels (shapes, finiteness, ``abundances >= 0`` and rows
    summing to one within ``sum_tol``) and raises a :class:`ValueError` that says what is wrong.

:func:`as_tensor` ``(a, name, dtype, device)``
    numpy / torch / xarray -> contiguous tensor.

Seeding: with ``seed`` set, the batch order and any randomness drawn inside the model (dropout, ...) come
from a private generator / forked global RNG, so two runs with the same seed give the same weights and the
caller's global RNG state is untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from .training import Diverged, Epoch, KeepBest, train_loop

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
History = dict[str, Any]


def as_tensor(a: Any, name: str, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu") -> torch.Tensor:
    """Convert a numpy array, tensor or DataArray to a contiguous tensor of ``dtype`` on ``device``."""
    if isinstance(a, torch.Tensor):
        t = a.detach()
    else:
        values = getattr(a, "values", a)  # DataArray -> ndarray (computes a dask array)
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be a numeric array; got {type(a).__name__}") from exc
        t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.to(device=device, dtype=dtype).contiguous()


def check_pairs(
    spectra: Any,
    abundances: Any,
    *,
    n_bands: int,
    n_endmembers: int,
    sum_tol: float = 1e-3,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate labelled pixels for supervised training.

    Parameters
    ----------
    spectra : array-like, shape (n_pixels, n_bands)
        Reflectance spectra, one pixel per row, finite.
    abundances : array-like, shape (n_pixels, n_endmembers)
        Abundance labels: non-negative, each row summing to one within ``sum_tol``.
    n_bands, n_endmembers : int
        What the model expects.
    sum_tol : float
        Tolerance on ``|sum_j a_ij - 1|`` (and on negative entries, ``a_ij >= -sum_tol``).
    dtype, device
        Of the returned tensors.

    Returns
    -------
    (Tensor (n_pixels, n_bands), Tensor (n_pixels, n_endmembers))

    Raises
    ------
    ValueError
        Wrong dimensions, shapes, pixel counts, non-finite values, negative abundances or rows not
        summing to one; the message gives the offending counts/values.
    """
    Y = as_tensor(spectra, "spectra", dtype, device)
    A = as_tensor(abundances, "abundances", dtype, device)
    if Y.ndim != 2 or Y.shape[1] != n_bands:
        raise ValueError(f"spectra must be (n_pixels, {n_bands} bands); got shape {tuple(Y.shape)}"
                         + (" (transposed? pixels go in rows)" if Y.ndim == 2 and Y.shape[0] == n_bands
                            else ""))
    if A.ndim != 2 or A.shape[1] != n_endmembers:
        raise ValueError(f"abundances must be (n_pixels, {n_endmembers} endmembers); got shape "
                         f"{tuple(A.shape)}"
                         + (" (transposed? pixels go in rows)" if A.ndim == 2 and A.shape[0] == n_endmembers
                            else ""))
    if Y.shape[0] != A.shape[0]:
        raise ValueError(f"{Y.shape[0]} spectra but {A.shape[0]} abundance rows")
    if Y.shape[0] == 0:
        raise ValueError("no training pixels")
    if not torch.isfinite(Y).all():
        raise ValueError(f"spectra contain {int((~torch.isfinite(Y)).sum())} NaN/inf values; drop those pixels")
    if not torch.isfinite(A).all():
        raise ValueError(f"abundances contain {int((~torch.isfinite(A)).sum())} NaN/inf values")
    amin = float(A.min())
    if amin < -sum_tol:
        raise ValueError(f"abundances must be non-negative; {int((A < -sum_tol).sum())} entries are "
                         f"negative (min {amin:.4g})")
    dev = (A.double().sum(1) - 1.0).abs()
    if float(dev.max()) > sum_tol:
        bad = int((dev > sum_tol).sum())
        raise ValueError(f"abundance rows must sum to one (tolerance {sum_tol}); {bad} of {A.shape[0]} "
                         f"rows do not (largest |sum - 1| = {float(dev.max()):.4g})")
    return Y, A


def fit_supervised(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-4,
    loss: LossFn | None = None,
    seed: int | None = None,
    params: Iterable[torch.nn.Parameter] | None = None,
    weight_decay: float = 0.0,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
    callback: Callable[[int, Any], dict[str, float] | None] | None = None,
    progress: bool | None = None,
    desc: str | None = None,
    schedule: str | None = None,
    optimizer: str = "adam",
    penalty: Callable[[], torch.Tensor] | None = None,
    keep_best: bool = True,
) -> History:
    """Train ``model`` with Adam on mini-batches of ``(inputs, targets)`` rows.

    Parameters
    ----------
    model : Module or callable
        ``model(x)`` with ``x`` of shape ``(b, ...)`` (a batch of rows of ``inputs``) returns predictions
        shaped like the matching rows of ``targets``. A Module is put in train mode while fitting and
        restored to its previous mode after.
    inputs : Tensor, shape (n, ...)
    targets : Tensor, shape (n, ...)
        Already validated and on the model's device/dtype (see :func:`check_pairs`).
    epochs : int
        Passes over the data (``0`` trains nothing and returns an empty history).
    batch_size : int
        Rows per Adam step; the last batch of an epoch may be smaller.
    lr : float
        Adam learning rate.
    loss : callable, optional
        ``loss(pred, target) -> scalar``; default :func:`xr_unmix.models.losses.mse`.
    seed : int, optional
        Makes batch order and in-model randomness reproducible (see module docstring).
    params : iterable of Parameter, optional
        What to optimise; default every ``requires_grad`` parameter of ``model`` (required when ``model``
        is not a Module).
    weight_decay : float
        Adam weight decay.
    validation : (Tensor, Tensor), optional
        Held-out ``(inputs, targets)``; its loss is computed after every epoch (no grad, eval mode).
    callback : callable, optional
        ``callback(epoch, model) -> dict | None`` after every epoch (``epoch`` counts from 1), in eval
        mode, under ``torch.no_grad``; returned ``{name: float}`` are appended to ``history[name]``.
    progress : bool, optional
        Show a tqdm bar over epochs (``None``: only when stderr is a terminal).
    desc : str, optional
        Progress-bar label.
    schedule : {None, "cosine"}
        Learning-rate schedule: constant ``lr`` (default), or cosine annealing from ``lr`` to 0 over the
        ``epochs`` (stepped once per epoch).
    optimizer : {"adam", "lbfgs"}
        ``"adam"`` (default): Adam on shuffled mini-batches. ``"lbfgs"``: full-batch L-BFGS
        (``torch.optim.LBFGS``, strong-Wolfe line search, history 50) for at most ``epochs`` iterations
        (and ``1.25 * epochs`` loss evaluations), run as a single "epoch": ``history["loss"]`` then has
        one entry (the final data loss), ``history["loss_evals"]`` the data loss of every evaluation,
        and ``validation`` / ``callback`` are evaluated once, at the end. ``batch_size``, ``seed`` and
        ``schedule`` play no part; ``lr`` is L-BFGS's step scale (1 is the usual choice). Meant for
        small models on small training sets.
    penalty : callable, optional
        ``penalty() -> scalar`` added to the loss of every step (e.g. a ridge on some parameters);
        ``history["loss"]`` records the data loss without it.
    keep_best : bool
        End in the epoch with the lowest training loss (L-BFGS: the evaluation with the lowest
        objective) rather than the last. A diverging loss restores that state and stops the run with
        one line (:class:`~xr_unmix.models.training.TrainingWarning`); see
        :func:`xr_unmix.models.training.train_loop`.

    Returns
    -------
    dict
        ``"loss"``: mean training loss of every epoch (list of float, length ``epochs``);
        ``"val_loss"``: per-epoch validation loss (when ``validation`` given);
        ``"time_s"``: wall-clock training time (s); ``"epochs"``, ``"batch_size"``, ``"lr"``, ``"seed"``,
        ``"n_samples"``, ``"best_epoch"``, ``"best_loss"``, ``"stopped"``; plus one list per key
        returned by ``callback``.
    """
    from .losses import mse

    epochs, batch_size = int(epochs), int(batch_size)
    _check_fit_args(epochs, batch_size, lr, inputs, targets, schedule, optimizer)
    loss_fn: LossFn = loss if loss is not None else mse
    is_module = isinstance(model, torch.nn.Module)
    if params is None:
        if not is_module:
            raise ValueError("pass params= when model is a plain callable")
        params = model.parameters()  # type: ignore[union-attr]
    plist = [p for p in params if p.requires_grad]
    if not plist:
        raise ValueError("nothing to train: no parameter requires grad")
    n = int(inputs.shape[0])
    history: History = {"epochs": epochs, "batch_size": batch_size, "lr": float(lr),
                        "n_samples": n, "schedule": schedule}
    if optimizer == "lbfgs":
        if weight_decay:
            raise ValueError("weight_decay is not supported with optimizer='lbfgs' (use penalty=)")
        history["optimizer"] = optimizer
        step = _lbfgs_step(model, inputs, targets, loss_fn, penalty, plist, lr, epochs, history)
        run_epochs = min(epochs, 1)  # all the iterations in one "epoch"
    else:
        step = _adam_step(model, inputs, targets, loss_fn, penalty, plist, lr, weight_decay,
                          batch_size, schedule, epochs)
        run_epochs = epochs
    host = model if is_module else _Params(plist)
    evaluate = _evaluator(model, is_module, loss_fn, validation, callback)

    def epoch_step(epoch: int, guard: KeepBest) -> Epoch:
        step.generator = epoch_step.generator  # type: ignore[attr-defined]
        r = step(epoch, guard)
        r.info.update(evaluate(epoch))
        return r

    out = train_loop(host, epoch_step, epochs=run_epochs, tensors=plist, seed=seed,
                     keep_best=keep_best, desc=desc or "training", progress=progress)
    history.update(out)
    if validation is not None:
        history.setdefault("val_loss", [])
    return history


def _check_fit_args(epochs: int, batch_size: int, lr: float, inputs: torch.Tensor,
                    targets: torch.Tensor, schedule: str | None, optimizer: str) -> None:
    """Refuse senseless :func:`fit_supervised` arguments with a :class:`ValueError` that says why."""
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"{inputs.shape[0]} inputs but {targets.shape[0]} targets")
    if schedule not in (None, "cosine"):
        raise ValueError(f"schedule must be None or 'cosine', got {schedule!r}")
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
    if optimizer == "lbfgs" and schedule is not None:
        raise ValueError("schedule is not supported with optimizer='lbfgs'")


class _Params(torch.nn.Module):
    """A Module around the parameters of a plain-callable model (for the loop's train/eval switch)."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        super().__init__()
        self.ps = torch.nn.ParameterList(params)


def _adam_step(model: Any, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn,
               penalty: Callable[[], torch.Tensor] | None, plist: list[torch.nn.Parameter],
               lr: float, weight_decay: float, batch_size: int, schedule: str | None,
               epochs: int) -> Any:
    """One Adam epoch over shuffled mini-batches (the state at the epoch's end is the one scored)."""
    opt = torch.optim.Adam(plist, lr=float(lr), weight_decay=float(weight_decay))
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
             if schedule == "cosine" else None)
    n = int(inputs.shape[0])

    def step(epoch: int, guard: KeepBest) -> Epoch:
        perm = torch.randperm(n, generator=step.generator).to(inputs.device)  # type: ignore[attr-defined]
        total = 0.0
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            value = loss_fn(model(inputs[idx]), targets[idx])
            if not torch.isfinite(value):
                raise Diverged(f"loss became {float(value)}; lower lr")
            (value + penalty() if penalty is not None else value).backward()
            opt.step()
            total += float(value.detach()) * int(idx.numel())
        if sched is not None:
            sched.step()
        return Epoch(total / n)

    return step


def _lbfgs_step(model: Any, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn,
                penalty: Callable[[], torch.Tensor] | None, plist: list[torch.nn.Parameter],
                lr: float, iterations: int, history: History) -> Any:
    """Full-batch L-BFGS as one "epoch": every evaluation is a candidate for keep-best."""
    opt = torch.optim.LBFGS(plist, lr=float(lr), max_iter=max(iterations, 1), history_size=50,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                            tolerance_change=1e-14)

    def step(epoch: int, guard: KeepBest) -> Epoch:
        evals: list[float] = []

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            data = loss_fn(model(inputs), targets)
            value = data + penalty() if penalty is not None else data
            v = float(value.detach())
            if not math.isfinite(v):  # a large trial value is the line search's to handle
                raise Diverged(f"loss became {v:.4g} (L-BFGS evaluation {len(evals)})")
            guard.consider(v, epoch, eligible=True)  # the state just evaluated
            evals.append(float(data.detach()))
            value.backward()
            return value

        # one call runs all the iterations: calling step() once per iteration (max_iter=1) was
        # measured to derail the line search on U-ADMM-AENet (docs/uadmm.md)
        try:
            opt.step(closure)  # type: ignore[arg-type]
        finally:
            history.update(evals=len(evals), loss_evals=evals)
        guard.restore()  # the best evaluation, not wherever the last line search stopped
        with torch.no_grad():
            final = float(loss_fn(model(inputs), targets))
        return Epoch(final, eligible=False)

    return step


def _evaluator(model: Any, is_module: bool, loss_fn: LossFn,
               validation: tuple[torch.Tensor, torch.Tensor] | None,
               callback: Callable[[int, Any], dict[str, float] | None] | None) -> Any:
    """``evaluate(epoch) -> {name: float}``: validation loss and callback values, eval mode, no grad."""

    def evaluate(epoch: int) -> dict[str, float]:
        if validation is None and callback is None:
            return {}
        was = model.training if is_module else None
        if is_module:
            model.eval()
        out: dict[str, float] = {}
        try:
            with torch.no_grad():
                if validation is not None:
                    out["val_loss"] = float(loss_fn(model(validation[0]), validation[1]))
                if callback is not None:
                    out.update({k: float(v) for k, v in (callback(epoch, model) or {}).items()})
        finally:
            if is_module and was is not None:
                model.train(was)
        return out

    return evaluate
