"""SUnSAL's ADMM (Bioucas-Dias & Figueiredo, 2010): the state of a set of pixels and its iterations.

With the splitting ``x = z`` and the scaled dual ``d`` (from ``z = d = 0`` unless ``x0`` is given)::

    x <- (E^T E + mu I)^-1 (E^T y + mu (z + d))      [+ affine correction onto 1^T x = 1 under ASC]
    z <- max(soft(x - d, lam / mu), 0)                [no clamp without ANC]
    d <- d - (x - z)

- The x-step works in the eigenbasis of ``E^T E = V diag(s) V^T``, so ``mu`` can differ per pixel at the
  cost of two ``R x R`` products per pixel and iteration. Under ASC the affine correction
  ``x += IF 1 (1 - 1^T x) / (1^T IF 1)`` (``IF = (E^T E + mu I)^-1``) is folded into the eigenbasis, so it
  costs a dot product, not another product with ``IF``.
- Every pixel runs its own ADMM: its own residuals, its own adaptive ``mu`` and its own stop. As in the
  reference code, the primal ``||x - z||`` and dual ``mu ||z - z_prev||`` residuals are looked at every
  ``10`` iterations; ``mu`` is doubled (halved) when the primal residual exceeds (falls below) ten times
  the dual one, and the scaled dual follows. A pixel's result therefore does not depend on which other
  pixels share its block: tiled and untiled runs agree (to float rounding).
- The working arrays hold only the pixels still running, contiguously; finished pixels are removed at
  those checks, so there is no gather/scatter inside the inner iterations.
- With a :class:`~.polish.Polisher`, the pixels are also polished every ``3`` iterations during the first
  40 and at every check after that; a certified pixel stops with the exact optimum.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from .polish import Polisher
from .problem import Normalized
from .simplex import project_simplex

CHECK_EVERY = 10  # iterations between residual checks and mu updates (as the reference code)
_POLISH_EVERY = 3  # iterations between polishing attempts (measured: 2-5 all fine, 10 slower)


@dataclass
class Tally:
    """Counts over one solve; :meth:`merge` adds a thread's counts under the lock."""

    n_conv: int = 0  #: pixels that met the tolerance or were certified
    n_pol: int = 0  #: pixels certified by an exact solve
    total_it: float = 0.0  #: iterations (or active-set steps) summed over the pixels
    worst: float = 0.0  #: largest final primal residual of the pixels that ran out of iterations
    max_used: int = 0  #: the most iterations any pixel used
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    bar: Any = field(default=None, repr=False)  #: a progress bar advanced by the pixels that finish

    def merge(self, n_conv: int = 0, n_pol: int = 0, total_it: float = 0.0, max_used: int = 0) -> None:
        with self.lock:
            if self.bar is not None and n_conv:
                self.bar.update(int(n_conv))
            self.n_conv += n_conv
            self.n_pol += n_pol
            self.total_it += total_it
            self.max_used = max(self.max_used, max_used)


@dataclass
class WorkingSet:
    """The ADMM state of the pixels still running: columns ``idx`` of the output, each (R, m) or (m,)."""

    idx: torch.Tensor  #: (m,) output columns
    z: torch.Tensor
    d: torch.Tensor  #: the scaled dual
    x: torch.Tensor
    mu: torch.Tensor  #: (1, m) per-pixel penalty
    b: torch.Tensor  #: the data term
    rp: torch.Tensor  #: (m,) the last primal residual
    inv: torch.Tensor | None = None  #: (R, m) diagonal of ``(S + mu)^-1``
    w: torch.Tensor | None = None  #: (R, m) ``(S + mu)^-1 V^T 1`` (ASC)
    rden: torch.Tensor | None = None  #: (1, m) ``1 / (1^T IF 1)`` (ASC)

    _STATE = ("idx", "z", "d", "x", "mu", "b", "rp")

    @classmethod
    def concat(cls, parts: list[WorkingSet]) -> WorkingSet:
        """One working set of the pixels of ``parts`` (the coefficients are recomputed by ``iterate``)."""
        return cls(**{k: torch.cat([getattr(p, k) for p in parts], dim=(0 if k in ("idx", "rp") else 1))
                      for k in cls._STATE})

    def keep(self, keep: torch.Tensor) -> None:
        """Drop the pixels where ``keep`` is False."""
        self.idx, self.rp = self.idx[keep], self.rp[keep]
        for k in ("z", "d", "x", "mu", "b", "inv", "w", "rden"):
            v = getattr(self, k)
            if v is not None:
                setattr(self, k, v[:, keep])


class Admm:
    """ADMM iterations writing finished pixels into ``out`` (R, N) and their counts into ``tally``."""

    def __init__(self, nrm: Normalized, out: torch.Tensor, tally: Tally, polisher: Polisher | None, *,
                 anc: bool, asc: bool, tol: float, adaptive_mu: bool) -> None:
        self.s, self.V, self.VT, self.Vt1 = nrm.s, nrm.V, nrm.VT, nrm.Vt1
        self.thr = nrm.lam_n  # the soft threshold is lam_n / mu per pixel
        self.out, self.tally, self.polisher = out, tally, polisher
        self.anc, self.asc, self.tol, self.adaptive_mu = anc, asc, tol, adaptive_mu
        self.check = tol > 0 or adaptive_mu
        self.tol_p = nrm.residual_tol(tol)

    def coeffs(self, ws: WorkingSet) -> None:
        """The x-step's per-pixel coefficients for the working set's ``mu``."""
        ws.inv = (self.s + ws.mu).reciprocal_()  # (R, m): diag of (S + mu)^-1 per pixel
        if not self.asc:
            ws.w = ws.rden = None
            return
        ws.w = ws.inv * self.Vt1  # (S + mu)^-1 V^T 1
        ws.rden = (ws.w * self.Vt1).sum(0, keepdim=True).reciprocal_()  # 1 / (1^T IF 1)

    def finish(self, cols: torch.Tensor, z: torch.Tensor, x: torch.Tensor) -> None:
        """Write ADMM's answer for the output columns ``cols`` (see ``sunsal_solve``'s Returns)."""
        if self.anc and self.asc:
            self.out[:, cols] = project_simplex(z, dim=0)
        elif self.asc:
            self.out[:, cols] = x
        else:
            self.out[:, cols] = z

    def _step(self, ws: WorkingSet) -> tuple[torch.Tensor, torch.Tensor]:
        """One iteration: sets ``ws.x``, returns the new ``z`` and ``d``."""
        t = torch.add(ws.z, ws.d).mul_(ws.mu).add_(ws.b)
        u = self.VT @ t  # the x-step in the eigenbasis: u = V^T (b + mu (z + d))
        if self.asc:
            # x = V[(S+mu)^-1 u + (S+mu)^-1 V^T 1 (1 - w^T u) / (1^T IF 1)]
            corr = (1.0 - (u * ws.w).sum(0, keepdim=True)).mul_(ws.rden)
            u.addcmul_(self.Vt1, corr)
        u.mul_(ws.inv)
        ws.x = self.V @ u
        v = ws.x - ws.d
        if self.thr > 0:
            tau = self.thr / ws.mu
            if self.anc:
                z_new = (v - tau).clamp_min_(0)
            else:
                z_new = torch.sign(v) * (v.abs() - tau).clamp_min_(0)
        else:
            z_new = v.clamp_min(0) if self.anc else v.clone()
        return z_new, z_new - v  # d_new = d - (x - z_new)

    def iterate(self, ws: WorkingSet, it: int, it_stop: int) -> int:
        """ADMM on ``ws`` from iteration ``it`` to ``it_stop``; finished pixels are written to ``out`` and
        dropped from ``ws``. Returns the last iteration."""
        loc = Tally()
        self.coeffs(ws)
        while it < it_stop and ws.idx.numel():
            it += 1
            z_new, d_new = self._step(ws)
            is_res = self.check and it % CHECK_EVERY == 0
            is_pol = self.polisher is not None and it % _POLISH_EVERY == 0 and (
                it <= 4 * CHECK_EVERY or it % CHECK_EVERY == 0)
            rp = rd = None
            if is_res:
                rp = (ws.d - d_new).square_().sum(0).sqrt_()  # ||x - z_new||
                rd = ws.mu[0] * (z_new - ws.z).square_().sum(0).sqrt_()
                ws.rp = rp
            ws.z, ws.d = z_new, d_new
            if is_res or is_pol:
                self._check(ws, it, rp, rd, is_pol, loc)
        self.tally.merge(loc.n_conv, loc.n_pol, loc.total_it, it)
        return it

    def _check(self, ws: WorkingSet, it: int, rp: torch.Tensor | None, rd: torch.Tensor | None, is_pol: bool,
               loc: Tally) -> None:
        """Stop the pixels that met the tolerance (``rp`` given) or were certified (``is_pol``), update
        ``mu`` and compact the working set."""
        if rp is not None and self.tol > 0:
            done = (rp <= self.tol_p) & (rd <= self.tol_p)
        else:
            done = torch.zeros(ws.idx.numel(), dtype=torch.bool, device=ws.idx.device)
        if is_pol:
            xp, okp = self.polisher(ws.b, ws.z)  # type: ignore[misc]
            if okp.any():
                k = int(okp.sum())
                self.out[:, ws.idx[okp]] = xp[:, okp]
                loc.n_pol += k
                loc.total_it += it * k
            fin = done & ~okp
            done = done | okp
        else:
            fin = done
        if fin.any():  # finished by the residual test: ADMM answer
            loc.total_it += it * int(fin.sum())
            self.finish(ws.idx[fin], ws.z[:, fin], ws.x[:, fin])
        loc.n_conv += int(done.sum())
        if self.adaptive_mu and rp is not None:
            up = (rp > 10 * rd) & ~done
            dn = (rd > 10 * rp) & ~done
            if up.any() or dn.any():
                f = torch.where(up, 2.0, torch.where(dn, 0.5, 1.0)).to(ws.z.dtype).unsqueeze(0)
                ws.mu = ws.mu * f
                ws.d = ws.d / f  # the scaled dual follows mu
                self.coeffs(ws)
        if done.any():  # compact the working arrays
            ws.keep(~done)
