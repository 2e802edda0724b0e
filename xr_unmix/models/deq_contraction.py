"""Contraction diagnostics of a DEQ operator: the Jacobian penalty and the spectral radius.

Bound as :meth:`DEQUnmix.jacobian_penalty <xr_unmix.DEQUnmix.jacobian_penalty>` (the contraction-promoting
regulariser of Bai et al., 2021, ``jac_reg`` in training) and :meth:`DEQUnmix.spectral_radius
<xr_unmix.DEQUnmix.spectral_radius>`; both only need the model's ``_map`` and ``equilibrium``.
"""

from __future__ import annotations

from typing import Any

import torch


def jacobian_penalty(self: Any, Y: torch.Tensor, A: torch.Tensor, n_samples: int = 1,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Hutchinson estimate of ``||J||_F^2 / d`` at ``A`` (``J`` = the operator's Jacobian in ``A``).

    ``E_v ||v^T J||^2 = ||J||_F^2`` for ``v ~ N(0, I)``; divided by ``d = A.numel()`` it is the mean
    squared singular value. Differentiable in the parameters (double backward), for the contraction-
    promoting regulariser of Bai et al. (2021, "Stabilizing Equilibrium Models by Jacobian
    Regularization"). ``A`` is detached first (the penalty is taken at that point).
    """
    z = A.detach().requires_grad_()
    fz = self._map(Y, self.endmember_matrix())(z)
    tot = fz.new_zeros(())
    for _ in range(int(n_samples)):
        v = torch.randn(fz.shape, generator=generator, dtype=fz.dtype).to(fz.device)
        (vjp,) = torch.autograd.grad(fz, z, v, create_graph=True)
        tot = tot + vjp.pow(2).sum() / vjp.numel()
    return tot / int(n_samples)

@torch.no_grad()
def spectral_radius(self: Any, Y: torch.Tensor, A: torch.Tensor | None = None, iters: int = 50,
                    seed: int = 0) -> float:
    """Power-iteration estimate of the spectral radius of the operator's Jacobian at ``A``.

    ``A`` (a state of :meth:`equilibrium`) defaults to the equilibrium of ``Y`` (``(B, bands, H,
    W)``). The Jacobian-vector products use the double-backward trick (no forward-mode AD needed). ``< 1`` is a local contraction; the
    closer to 1, the slower every solve (and the larger the error of a solve stopped early).
    """
    if A is None:
        A = self.equilibrium(Y, warn=False)
    f = self._map(Y, self.endmember_matrix())
    g = torch.Generator().manual_seed(int(seed))
    u = torch.randn(A.shape, generator=g, dtype=A.dtype).to(A.device)
    u = u / u.norm()
    lam = 0.0
    with torch.enable_grad():
        z = A.detach().requires_grad_()
        fz = f(z)
        v = torch.zeros_like(fz, requires_grad=True)
        (vjp,) = torch.autograd.grad(fz, z, v, create_graph=True)  # J^T v, linear in v
        for _ in range(int(iters)):
            (Ju,) = torch.autograd.grad(vjp, v, u, retain_graph=True)  # J u
            lam = float(Ju.norm())
            if lam == 0:
                break
            u = Ju / lam
    return lam
