"""Euclidean projection onto the probability simplex (Duchi et al., 2008)."""

from __future__ import annotations

import torch


def project_simplex(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean projection onto the probability simplex along ``dim`` (Duchi et al., 2008).

    Parameters
    ----------
    x : Tensor, any shape
    dim : int
        Axis holding the abundances.

    Returns
    -------
    Tensor, same shape, non-negative and summing to one along ``dim``.
    """
    x = x.movedim(dim, -1)
    r = x.shape[-1]
    u, _ = torch.sort(x, dim=-1, descending=True)
    css = u.cumsum(-1) - 1.0
    k = torch.arange(1, r + 1, device=x.device, dtype=x.dtype)
    cond = u - css / k > 0
    rho = cond.to(torch.int64).cumsum(-1).argmax(-1, keepdim=True)  # last True index
    tau = css.gather(-1, rho) / (rho + 1).to(x.dtype)
    return (x - tau).clamp_min(0).movedim(-1, dim)
