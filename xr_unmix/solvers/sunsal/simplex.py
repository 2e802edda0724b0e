"""Euclidean projection onto the probability simplex (Duchi et al., 2008; Condat, 2016).

The threshold ``tau`` with ``sum(max(x - tau, 0)) = 1`` is ``max_k (sum_{i <= k} u_i - 1) / k`` over the
values ``u`` sorted in decreasing order (Condat 2016, the maximum is reached at the active count). For a
few endmembers (``R <= 8``) the same maximum is taken without sorting: for each ``j``, over the set
``{i : x_i >= x_j}`` (its sum and size are those of the sorted prefix ending at ``x_j``'s last tie, and
the maximum over prefixes is reached at such an end), which is ``R^2`` element-wise operations in place
of a sort along a strided axis (a DEQ tile's 5 x 288² projection: 24 -> 10 ms, 1 thread). Larger ``R``
sorts a contiguous copy.
"""

from __future__ import annotations

import torch

_SORT_FREE_MAX_R = 8


def project_simplex(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean projection onto the probability simplex along ``dim``.

    Parameters
    ----------
    x : Tensor, any shape
    dim : int
        Axis holding the abundances.

    Returns
    -------
    Tensor, same shape, non-negative and summing to one along ``dim``.
    """
    r = x.shape[dim]
    if r <= _SORT_FREE_MAX_R:
        xs = x.unbind(dim)
        tau = None
        for xj in xs:
            s = torch.zeros_like(xj)
            c = torch.zeros_like(xj)
            for xi in xs:
                m = (xi >= xj).to(x.dtype)
                s.addcmul_(m, xi)
                c.add_(m)
            t = (s - 1.0) / c
            tau = t if tau is None else torch.maximum(tau, t)
        return (x - tau.unsqueeze(dim)).clamp_min(0)  # type: ignore[union-attr]
    xc = x.movedim(dim, -1).contiguous()
    u, _ = torch.sort(xc, dim=-1, descending=True)
    k = torch.arange(1, r + 1, device=x.device, dtype=x.dtype)
    tau = ((u.cumsum(-1) - 1.0) / k).amax(-1, keepdim=True)
    return (xc - tau).clamp_min(0).movedim(-1, dim)
