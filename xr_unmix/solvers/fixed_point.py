"""Fixed-point machinery for deep equilibrium models: forward solvers and implicit gradients.

Nothing here knows about unmixing. A *map* is a callable ``f(z) -> z'`` on a batched tensor ``z`` of
shape ``(B, ...)``; batch element ``b`` is an independent problem with its own residual, its own Anderson
mixing coefficients and its own stop.

- :func:`anderson` -- Anderson acceleration (type II, Walker & Ni 2011) with history ``m``, Tikhonov
  regularisation ``lam`` of the least-squares step, damping ``beta``, a relative-residual stop and a
  per-sample fallback to a damped plain step when the least-squares step is ill-conditioned.
- :func:`fixed_point_iter` -- damped plain iteration ``z <- (1 - beta) z + beta f(z)``.
- :func:`deq_fixed_point` -- solve without building a graph, then re-attach the solution to autograd
  with one differentiable application of ``f`` and either the implicit-function-theorem gradient (a
  ``torch.autograd`` hook solving ``g = J^T g + dL/dz*`` with its own bounded solve) or the Jacobian-free
  gradient (Fung et al., 2022: ``g = dL/dz*``, i.e. the backward solve skipped).

Memory of the backward pass is that of one application of ``f``, whatever the number of iterations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from ._anderson import mixing_weights

FixedPointMap = Callable[[torch.Tensor], torch.Tensor]
SolverName = Literal["anderson", "plain"]
BackwardName = Literal["implicit", "jfb", "unrolled"]


@dataclass
class FixedPointInfo:
    """Diagnostics of one fixed-point solve.

    Attributes
    ----------
    residuals : Tensor, shape (n_iter, B)
        Relative residual ``||f(z_k) - z_k|| / (||f(z_k)|| + eps)`` of every sample at every iteration
        (the raw residual trace, not a running minimum).
    n_iter : int
        Number of applications of ``f`` performed (the trace length).
    final_residual : Tensor, shape (B,)
        Residual of the returned iterate (the lowest seen for that sample).
    converged : Tensor of bool, shape (B,)
        ``final_residual <= tol``.
    fallback_steps : int
        How many (sample, iteration) pairs used the damped plain step instead of Anderson's.
    tol : float
    """

    residuals: torch.Tensor
    n_iter: int
    final_residual: torch.Tensor
    converged: torch.Tensor
    fallback_steps: int = 0
    tol: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def max_residual(self) -> float:
        """Largest final residual over the batch."""
        return float(self.final_residual.max()) if self.final_residual.numel() else 0.0

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    def trace(self) -> list[float]:
        """Largest residual over the batch at each iteration, as a list of floats."""
        return [float(v) for v in self.residuals.max(dim=1).values] if self.n_iter else []


def _residual(fz: torch.Tensor, z: torch.Tensor, eps: float = 1e-12,
              g: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample relative residual, shape (B,) (``g``: ``fz - z`` when the caller has it already)."""
    d = (fz - z if g is None else g).flatten(1).norm(dim=1)
    return d / (fz.flatten(1).norm(dim=1) + eps)


def _check(z0: torch.Tensor, max_iter: int, tol: float) -> None:
    if z0.ndim < 1 or z0.shape[0] < 1:
        raise ValueError(f"z0 must be batched, shape (B, ...); got {tuple(z0.shape)}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")


def fixed_point_iter(
    f: FixedPointMap,
    z0: torch.Tensor,
    *,
    beta: float = 1.0,
    tol: float = 1e-5,
    max_iter: int = 100,
) -> tuple[torch.Tensor, FixedPointInfo]:
    """Damped plain iteration ``z <- (1 - beta) z + beta f(z)``.

    Parameters
    ----------
    f : callable
        The map, ``(B, ...) -> (B, ...)``.
    z0 : Tensor, shape (B, ...)
        Start.
    beta : float
        Damping in ``(0, 1]``.
    tol : float
        Stop once every sample's relative residual is ``<= tol`` (``0``: run ``max_iter`` steps).
    max_iter : int
        Most applications of ``f``.

    Returns
    -------
    z : Tensor, shape (B, ...)
        Lowest-residual iterate of each sample.
    info : FixedPointInfo
    """
    _check(z0, max_iter, tol)
    if not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    B = z0.shape[0]
    z = z0
    best = z0.clone()
    best_res = torch.full((B,), math.inf, dtype=torch.float64, device=z0.device)
    trace = []
    for _ in range(max_iter):
        fz = f(z)
        res = _residual(fz, z).double()
        better = res < best_res
        best = torch.where(better.view(B, *([1] * (z.ndim - 1))), z, best)
        best_res = torch.where(better, res, best_res)
        trace.append(res.clone())
        if tol > 0 and bool((best_res <= tol).all()):
            break
        z = fz if beta == 1.0 else (1 - beta) * z + beta * fz
    residuals = torch.stack(trace)
    info = FixedPointInfo(residuals=residuals, n_iter=len(trace), final_residual=best_res,
                          converged=best_res <= tol, tol=tol)
    return best, info


def anderson(
    f: FixedPointMap,
    z0: torch.Tensor,
    *,
    m: int = 5,
    lam: float = 1e-4,
    beta: float = 1.0,
    tol: float = 1e-5,
    max_iter: int = 50,
    fallback_beta: float = 0.5,
    max_cond: float = 1e10,
    max_coef: float = 1e4,
    keep_f: bool = False,
) -> tuple[torch.Tensor, FixedPointInfo] | tuple[torch.Tensor, FixedPointInfo, torch.Tensor]:
    """Anderson acceleration of ``z = f(z)`` over a batch, with a damped-iteration fallback.

    At iteration ``k`` with the last ``n = min(k, m)`` iterates ``x_i`` and residuals
    ``g_i = f(x_i) - x_i``, the mixing weights solve (per sample, in float64)::

        min_alpha ||sum_i alpha_i g_i||^2 + lam * scale * ||alpha||^2   s.t.  sum_i alpha_i = 1

    (``scale`` = the largest diagonal entry of ``G G^T``, so ``lam`` is relative) and the next iterate is
    ``x = beta * sum alpha_i f(x_i) + (1 - beta) * sum alpha_i x_i``. A sample whose system is singular,
    has condition number above ``max_cond``, or gives non-finite weights or weights larger than
    ``max_coef`` takes the damped plain step ``x = (1 - fallback_beta) x_k + fallback_beta f(x_k)`` instead.

    Parameters
    ----------
    f : callable
        The map, ``(B, ...) -> (B, ...)``; called once per iteration on the whole batch.
    z0 : Tensor, shape (B, ...)
        Start.
    m : int
        History length (``m = 1`` is damped plain iteration with extra bookkeeping).
    lam : float
        Relative Tikhonov regularisation of the least-squares step.
    beta : float
        Damping (mixing) of the Anderson step, in ``(0, 1]``.
    tol : float
        Stop once every sample's relative residual ``||f(z) - z|| / ||f(z)||`` is ``<= tol``.
    max_iter : int
        Most applications of ``f`` (the solve never runs longer).
    fallback_beta : float
        Damping of the fallback plain step.
    max_cond, max_coef : float
        Ill-conditioning thresholds that trigger the fallback.
    keep_f : bool
        Also return ``f(z)`` of the returned iterate, kept from the iteration that evaluated it (so a
        caller that needs ``f(z*)`` does not apply ``f`` once more).

    Returns
    -------
    z : Tensor, shape (B, ...)
        The lowest-residual iterate of each sample.
    info : FixedPointInfo
        Residual trace, final residuals, convergence flags, fallback count.
    fz : Tensor, shape (B, ...)
        With ``keep_f=True``: ``f(z)``, as evaluated during the solve.
    """
    _check(z0, max_iter, tol)
    if m < 1:
        raise ValueError(f"history m must be >= 1, got {m}")
    if not 0 < beta <= 1 or not 0 < fallback_beta <= 1:
        raise ValueError(f"beta and fallback_beta must be in (0, 1], got {beta}, {fallback_beta}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    shape = z0.shape
    B = shape[0]
    bview = (B, *([1] * (len(shape) - 1)))
    D = z0[0].numel()
    # iterates x_i stored only when mixed (beta < 1); empty, not zeros: only written slots [:, :n] are read
    X = torch.empty((B, m if beta != 1.0 else 0, D), dtype=z0.dtype, device=z0.device)
    F = torch.empty((B, m, D), dtype=z0.dtype, device=z0.device)
    gx = torch.empty_like(z0)  # f(x) - x, one buffer for every iteration
    # residuals g_i = f(x_i) - x_i (float64) and their Gram matrix, one new row per iteration (not m)
    Gh = torch.empty((B, m, D), dtype=torch.float64, device=z0.device)
    GGh = torch.zeros((B, m, m), dtype=torch.float64, device=z0.device)
    best = z0.clone()
    best_f = z0 if keep_f else None  # f(best), replaced at the first iteration (best_res = inf)
    best_res = torch.full((B,), math.inf, dtype=torch.float64, device=z0.device)
    trace = []
    n_fallback = 0
    x = z0
    for k in range(max_iter):
        fx = f(x)
        torch.sub(fx, x, out=gx)  # the residual g = f(x) - x, once: for the stop test and the history
        res = _residual(fx, x, g=gx).double()
        better = res < best_res
        all_better = k > 0 and bool(better.all())  # (k = 0: x may be the caller's z0, never aliased)
        best = x if all_better else torch.where(better.view(bview), x, best)
        if keep_f:
            best_f = fx if k == 0 or all_better else torch.where(better.view(bview), fx, best_f)
        best_res = torch.where(better, res, best_res)
        trace.append(res.clone())
        if (tol > 0 and bool((best_res <= tol).all())) or k == max_iter - 1:
            break
        slot = k % m
        if beta != 1.0:
            X[:, slot] = x.reshape(B, -1)
        F[:, slot] = fx.reshape(B, -1)
        n = min(k + 1, m)
        Gh[:, slot] = gx.reshape(B, -1)  # (to float64 in the copy)
        row = torch.bmm(Gh[:, :n], Gh[:, slot, :, None])[:, :, 0]  # (B, n): g_i . g_slot
        GGh[:, slot, :n] = row
        GGh[:, :n, slot] = row
        if n == 1:
            x = fx if beta == 1.0 else (1 - beta) * x + beta * fx
            continue
        alpha, ok = mixing_weights(GGh[:, :n, :n], lam, max_coef, max_cond)
        alpha = alpha.to(X.dtype)
        mixF = torch.einsum("bn,bnd->bd", alpha, F[:, :n]).view(shape)
        if beta == 1.0:
            acc = mixF
        else:
            mixX = torch.einsum("bn,bnd->bd", alpha, X[:, :n]).view(shape)
            acc = beta * mixF + (1 - beta) * mixX
        bad = int((~ok).sum())
        n_fallback += bad
        x = acc if not bad else torch.where(ok.view(bview), acc, (1 - fallback_beta) * x + fallback_beta * fx)
    residuals = torch.stack(trace)
    info = FixedPointInfo(residuals=residuals, n_iter=len(trace), final_residual=best_res,
                          converged=best_res <= tol, fallback_steps=n_fallback, tol=tol)
    return (best, info, best_f) if keep_f else (best, info)  # type: ignore[return-value]


def solve(
    f: FixedPointMap,
    z0: torch.Tensor,
    *,
    solver: SolverName = "anderson",
    **kwargs: float | int,
) -> tuple[torch.Tensor, FixedPointInfo]:
    """Dispatch to :func:`anderson` or :func:`fixed_point_iter` by name."""
    if solver == "anderson":
        return anderson(f, z0, **kwargs)  # type: ignore[arg-type]
    if solver == "plain":
        allowed = {"beta", "tol", "max_iter"}
        return fixed_point_iter(f, z0, **{k: v for k, v in kwargs.items() if k in allowed})  # type: ignore[arg-type]
    raise ValueError(f"unknown solver {solver!r}: use 'anderson' or 'plain'")


@dataclass
class BackwardStats:
    """Filled by the implicit-gradient hook each time a backward pass runs through it."""

    n_calls: int = 0
    last_residual: float = math.nan
    last_iter: int = 0


def deq_fixed_point(
    f: FixedPointMap,
    z0: torch.Tensor,
    *,
    solver: SolverName = "anderson",
    solver_kwargs: dict[str, float | int] | None = None,
    backward: BackwardName = "implicit",
    b_solver: SolverName = "anderson",
    b_kwargs: dict[str, float | int] | None = None,
    backward_stats: BackwardStats | None = None,
) -> tuple[torch.Tensor, FixedPointInfo]:
    """Solve ``z = f(z)`` and return ``z*`` attached to autograd.

    The forward solve runs under ``torch.no_grad()``. The returned tensor is ``f(z*)`` (one more
    application, so that it lies in the range of ``f``); when grad mode is on it carries a graph (so
    gradients reach ``f``'s parameters and inputs), and

    - ``backward="implicit"``: a hook replaces the incoming gradient ``v = dL/dz*`` by the solution of
      ``g = J^T g + v`` with ``J = df/dz`` at ``z*`` (vector-Jacobian products through one stored
      application of ``f``), solved by ``b_solver`` with ``b_kwargs`` (its own ``tol``/``max_iter``);
      this is the implicit-function-theorem gradient ``(I - J^T)^-1 v``;
    - ``backward="jfb"``: no hook, ``g = v`` (Jacobian-free backprop; cheap, a descent direction when
      ``f`` is contractive);
    - ``backward="unrolled"``: the forward iterations are *not* detached -- plain damped iteration with a
      graph through every step (memory grows with iterations; the baseline the others are tested against).

    Parameters
    ----------
    f : callable
        ``(B, ...) -> (B, ...)``, differentiable in its parameters/closure inputs.
    z0 : Tensor, shape (B, ...)
        Start (detached internally).
    solver, solver_kwargs
        Forward solver and its options (see :func:`anderson`, :func:`fixed_point_iter`).
    backward : {"implicit", "jfb", "unrolled"}
    b_solver, b_kwargs
        Backward solver and options (default ``tol=1e-6, max_iter=30``).
    backward_stats : BackwardStats, optional
        Updated by the hook with the backward solve's residual and iteration count.

    Returns
    -------
    z : Tensor, shape (B, ...)
    info : FixedPointInfo
        Of the forward solve.
    """
    solver_kwargs = dict(solver_kwargs or {})
    if backward == "unrolled":
        kw = {k: v for k, v in solver_kwargs.items() if k in ("beta", "max_iter")}
        beta = float(kw.get("beta", 1.0))
        n = int(kw.get("max_iter", 50))
        z = z0
        trace = []
        for _ in range(n):
            fz = f(z)
            trace.append(_residual(fz, z).detach().double())
            z = fz if beta == 1.0 else (1 - beta) * z + beta * fz
        res = torch.stack(trace)
        tol = float(solver_kwargs.get("tol", 0.0))
        return z, FixedPointInfo(residuals=res, n_iter=n, final_residual=res[-1],
                                 converged=res[-1] <= tol, tol=tol)
    if backward not in ("implicit", "jfb"):
        raise ValueError(f"unknown backward {backward!r}: use 'implicit', 'jfb' or 'unrolled'")
    # The returned value is always f(z*): in the range of f (e.g. feasible when f ends with a projection,
    # which an Anderson extrapolation z* need not be), and with a graph when grad mode is on. Without
    # grad (inference) Anderson's own evaluation of f(z*) is returned: applying f once more cost a
    # second operator call per solve (half of an untrained model's tile, which converges at once).
    if solver == "anderson" and not torch.is_grad_enabled():
        _, info, z = anderson(f, z0.detach(), keep_f=True, **solver_kwargs)  # type: ignore[arg-type,misc]
        return z, info
    with torch.no_grad():
        z_star, info = solve(f, z0.detach(), solver=solver, **solver_kwargs)
    z = f(z_star)
    if not torch.is_grad_enabled():
        return z, info
    if backward == "jfb" or not z.requires_grad:
        return z, info
    z_in = z_star.detach().requires_grad_()
    f_in = f(z_in)
    bkw: dict[str, float | int] = {"tol": 1e-6, "max_iter": 30, **(b_kwargs or {})}
    stats = backward_stats

    def hook(grad: torch.Tensor) -> torch.Tensor:
        def bmap(g: torch.Tensor) -> torch.Tensor:
            (vjp,) = torch.autograd.grad(f_in, z_in, g, retain_graph=True)
            return vjp + grad

        with torch.enable_grad():
            g, binfo = solve(bmap, grad, solver=b_solver, **bkw)
        if stats is not None:
            stats.n_calls += 1
            stats.last_residual = binfo.max_residual
            stats.last_iter = binfo.n_iter
        return g

    z.register_hook(hook)
    return z, info
