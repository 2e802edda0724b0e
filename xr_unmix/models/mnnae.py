"""MNN-AE-2, the seed paper's comparison net: non-negative ISTA unrolled into ``K`` layers (after Qian
et al.'s MNN-AE). Built from the same pieces as U-ADMM-AENet (:mod:`.unrolled`) without the dual
variable; warm-started as ISTA with step ``1/L``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .registry import register_model
from .unrolled import _endmember_inputs, _soft_nonneg, _UnrolledNet


@register_model
class MNNAE(_UnrolledNet):
    """MNN-AE: ``layers`` unrolled (LISTA-style) ISTA iterations, the seed paper's "MNN-AE-2" baseline.

    ``x_k = max(soft(W_k y + S_k x_{k-1}, theta_k), 0)`` from ``x_0 = 0``, output normalised to sum to one.
    Trained, as in the comparison, with plain MSE (``default_alphas = (1, 0, 0)``).

    Attributes
    ----------
    W : Parameter (L, R, bands)
    S : Parameter (L, R, R)
    theta : Parameter (L,)
    E : buffer (bands, R)
    """

    default_alphas = (1.0, 0.0, 0.0)

    def __init__(self, n_bands: int, n_endmembers: int, endmember_names: list[str] | None = None,
                 wavelengths: list[float] | None = None, *, layers: int = 2, tied: bool = False,
                 lam: float = 0.0) -> None:
        super().__init__(n_bands, n_endmembers, endmember_names, wavelengths, layers=layers, tied=tied)
        self.lam = float(lam)
        L, R, nb = self._n_sets, self.n_endmembers, self.n_bands
        self.W = torch.nn.Parameter(torch.zeros(L, R, nb))
        self.S = torch.nn.Parameter(torch.zeros(L, R, R))
        self.theta = torch.nn.Parameter(torch.zeros(L))
        self.config = {"layers": self.layers, "tied": self.tied, "lam": self.lam}

    @classmethod
    def from_endmembers(cls, E: Any, layers: int = 2, lam: float = 0.0, tied: bool = False,
                        dtype: torch.dtype = torch.float32) -> MNNAE:
        """A network equal to ``layers`` non-negative ISTA iterations (step ``1/L``) for ``E``.

        Parameters
        ----------
        E : DataArray (band, endmember) or array (bands, R)
        layers : int
            Paper's comparison: 2 ("MNN-AE-2").
        lam : float
            l1 weight (``theta = lam / L``).
        tied : bool
        dtype : torch.dtype
        """
        Em, names, wl = _endmember_inputs(E)
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        G = Em.T @ Em
        L = float(np.linalg.eigvalsh(G)[-1])
        if not L > 0:
            raise ValueError("the endmember matrix is all zeros")
        net = cls(Em.shape[0], Em.shape[1], names, wl, layers=layers, tied=tied, lam=lam).to(dtype)
        with torch.no_grad():
            net.W.copy_(torch.from_numpy(Em.T / L).expand_as(net.W))
            net.S.copy_(torch.from_numpy(np.eye(Em.shape[1]) - G / L).expand_as(net.S))
            net.theta.fill_(lam / L)
            net.E.copy_(torch.from_numpy(Em))
        return net

    def iterate(self, y: torch.Tensor, W: torch.Tensor | None = None) -> torch.Tensor:
        """Run the ``K`` ISTA layers from ``x_0 = 0``; returns ``x_K`` (n, R), non-negative, not normalised.

        ``W`` (optional, shaped like the parameter) replaces the parameter ``W``."""
        self._check_input(y)
        x = y.new_zeros(y.shape[0], self.n_endmembers)
        W = self.W if W is None else W
        for k in range(self.layers):
            i = 0 if self.tied else k
            x = _soft_nonneg(y @ W[i].T + x @ self.S[i].T, self.theta[i])
        return x
