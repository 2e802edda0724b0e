"""Contraction diagnostic of a DEQ operator: the spectral radius of its Jacobian at the equilibrium.

Bound as :meth:`DEQUnmix.spectral_radius <xr_unmix.DEQUnmix.spectral_radius>`; it only needs the model's
``_map`` and ``equilibrium``.
"""

from __future__ import annotations

from typing import Any

import torch


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
