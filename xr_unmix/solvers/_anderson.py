"""Anderson acceleration's mixing weights, from the Gram matrix of the residual history."""

from __future__ import annotations

import math

import torch


def mixing_weights(GG: torch.Tensor, lam: float, max_coef: float,
                   max_cond: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``alpha`` (B, n) minimising ``||sum_i alpha_i g_i||^2 + lam scale ||alpha||^2`` subject to
    ``sum_i alpha_i = 1``, from ``GG = G G^T`` (B, n, n, float64; ``scale`` its largest diagonal entry),
    and ``ok`` (B,): the system was regular (condition number ``<= max_cond``) and every weight finite
    and ``<= max_coef`` in size. ``alpha`` is 0 where not ``ok`` (the caller takes a plain step there).
    """
    B, n = GG.shape[0], GG.shape[1]
    scale = GG.diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(1e-300)  # (B,)
    H = torch.zeros((B, n + 1, n + 1), dtype=torch.float64, device=GG.device)
    H[:, 0, 1:] = 1.0
    H[:, 1:, 0] = 1.0
    eye = torch.eye(n, dtype=torch.float64, device=GG.device)
    H[:, 1:, 1:] = GG / scale.view(B, 1, 1) + lam * eye
    rhs = torch.zeros((B, n + 1, 1), dtype=torch.float64, device=GG.device)
    rhs[:, 0] = 1.0
    sol, lu_info = torch.linalg.solve_ex(H, rhs)
    alpha = sol[:, 1:, 0]  # (B, n)
    ok = (lu_info == 0) & torch.isfinite(alpha).all(dim=1) & (alpha.abs().amax(dim=1) <= max_coef)
    if max_cond < math.inf:
        cond = torch.linalg.cond(H)
        ok &= torch.isfinite(cond) & (cond <= max_cond)
    return torch.where(ok[:, None], alpha, torch.zeros_like(alpha)), ok
