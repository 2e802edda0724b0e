"""Unrolled sparse-regression networks: U-ADMM-AENet and the ISTA-unrolled MNN-AE comparison net.

U-ADMM-AENet (Zhou & Rodrigues, "ADMM-based hyperspectral unmixing networks for abundance and endmember
estimation", the seed paper) unrolls ``K`` iterations of the ADMM solver of

    min_x 1/2 ||y - E x||^2 + lam ||x||_1   s.t. x >= 0

into ``K`` network layers. Layer ``k`` (parameters ``Theta_k = {W_k, B_k, theta_k, eta_k}``) is::

    x_k = W_k y + B_k (z_{k-1} + d_{k-1})                  X-update, eq. (7)
    z_k = max(soft(x_k - d_{k-1}, max(theta_k, 0)), 0)     Z-update, eq. (8) (threshold kept >= 0)
    d_k = d_{k-1} - eta_k (x_k - z_k)                      D-update, eq. (9)

from ``z_0 = d_0 = 0``; the output is ``z_K`` divided by its sum (ASC). Warm start (sec. 4.3):
``W = (E^T E + mu I)^-1 E^T``, ``B = mu (E^T E + mu I)^-1``, ``theta = lam / mu``, ``eta = 1``, so the
untrained network computes exactly ``K`` SUnSAL (plain ADMM, fixed ``mu``) iterations.

MNN-AE-2 (the paper's comparison, after Qian et al.'s ISTA-unrolled MNN-AE) is built from the same pieces
without the dual variable: ``x_k = max(soft(W_k y + S_k x_{k-1}, theta_k), 0)`` from ``x_0 = 0``, warm
started as ISTA with step ``1/L`` (``L`` the largest eigenvalue of ``E^T E``): ``W = E^T / L``,
``S = I - E^T E / L``, ``theta = lam / L``; output normalised to sum to one.

Both are pixel-wise :class:`~xr_unmix.models.base.UnmixModel` s: ``forward`` maps spectra ``(n, bands)`` to
abundances ``(n, R)``; they know nothing of xarray (``cube.unmix.admm`` does the tiling).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .losses import PAPER_ALPHAS
from .mnnae import MNNAE
from .registry import register_model
from .unrolled import _endmember_inputs, _soft_nonneg, _UnrolledNet
from .unrolled_training import (
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_RIDGE,
    DEFAULT_SUBSPACE,
    LBFGS_EPOCHS,
    LBFGS_LR,
    PAPER_LR,
)

__all__ = ["DEFAULT_EPOCHS", "DEFAULT_LR", "DEFAULT_RIDGE", "DEFAULT_SUBSPACE", "LBFGS_EPOCHS", "LBFGS_LR",
           "MNNAE", "PAPER_LR", "UADMMNet"]

@register_model
class UADMMNet(_UnrolledNet):
    """U-ADMM-AENet: ``layers`` unrolled ADMM iterations with learnable ``W_k, B_k, theta_k, eta_k``.

    Build with :meth:`from_endmembers` (warm start = exact ADMM); the constructor makes a zero network
    of the right shape (used by :func:`~xr_unmix.load_model`).

    Parameters
    ----------
    n_bands, n_endmembers : int
    endmember_names : list of str, optional
    wavelengths : list of float, optional
        Band centres in nm.
    layers : int
        ``K``, the number of unrolled iterations (paper: 2).
    tied : bool
        Share one ``Theta`` across all layers (default: untied, as the paper).
    lam, mu : float
        The ADMM ``lam`` and ``mu`` of the warm start (recorded in the config).

    Attributes
    ----------
    W : Parameter (L, R, bands)      -- ``L = 1`` if tied else ``layers``
    B : Parameter (L, R, R)
    theta : Parameter (L,)
    eta : Parameter (L,)
    E : buffer (bands, R)             -- the endmembers of the warm start
    """

    default_alphas = PAPER_ALPHAS
    default_optimizer = "lbfgs"
    default_subspace = DEFAULT_SUBSPACE
    default_ridge = DEFAULT_RIDGE

    def __init__(self, n_bands: int, n_endmembers: int, endmember_names: list[str] | None = None,
                 wavelengths: list[float] | None = None, *, layers: int = 2, tied: bool = False,
                 lam: float = 0.0, mu: float = 1.0) -> None:
        super().__init__(n_bands, n_endmembers, endmember_names, wavelengths, layers=layers, tied=tied)
        self.lam = float(lam)
        self.mu = float(mu)
        L, R, nb = self._n_sets, self.n_endmembers, self.n_bands
        self.W = torch.nn.Parameter(torch.zeros(L, R, nb))
        self.B = torch.nn.Parameter(torch.zeros(L, R, R))
        self.theta = torch.nn.Parameter(torch.zeros(L))
        self.eta = torch.nn.Parameter(torch.ones(L))
        self.config = {"layers": self.layers, "tied": self.tied, "lam": self.lam, "mu": self.mu}

    @classmethod
    def from_endmembers(cls, E: Any, layers: int = 2, lam: float = 0.0, mu: float | None = None,
                        tied: bool = False, dtype: torch.dtype = torch.float32) -> UADMMNet:
        """A network equal to ``layers`` ADMM (SUnSAL) iterations for ``E`` (paper sec. 4.3).

        Parameters
        ----------
        E : DataArray (band, endmember) or array (bands, R)
            Endmember spectra, in the units of the spectra the network will see. Names and the
            ``wavelength`` coordinate (nm) of a DataArray are kept in the model.
        layers : int
            Number of unrolled iterations ``K`` (paper: 2).
        lam : float
            l1 weight of the sparse regression (``theta = lam / mu``). Default 0.
        mu : float, optional
            ADMM penalty. Default ``0.01 * lambda_max(E^T E)``: SUnSAL's default (``mu = 0.01`` on the
            problem normalised by ``||E||_2``), so the untrained network is ``K`` iterations of the
            package's SUnSAL without adaptive ``mu``. (The paper's "upper bound to the largest eigenvalue"
            ``mu = lambda_max`` starts much further from the solution after 2 iterations and trained
            worse on Jasper Ridge: RMSE 0.04-0.13 vs 0.02, see docs/uadmm.md.)
        tied : bool
            One parameter set shared by all layers.
        dtype : torch.dtype
            Parameter dtype (float32 by default).

        Returns
        -------
        UADMMNet
            Untrained; ``net.iterate(Y.T)`` equals ``sunsal_solve(Y, E, lam=lam, mu=mu, anc=True,
            asc=False, normalize=False, adaptive_mu=False, tol=0, max_iter=layers).T``.
        """
        Em, names, wl = _endmember_inputs(E)
        G = Em.T @ Em
        if mu is None:
            mu = 0.01 * float(np.linalg.eigvalsh(G)[-1])
        mu = float(mu)
        if not mu > 0:
            raise ValueError(f"mu must be > 0, got {mu}")
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        net = cls(Em.shape[0], Em.shape[1], names, wl, layers=layers, tied=tied, lam=lam, mu=mu).to(dtype)
        inv = np.linalg.inv(G + mu * np.eye(Em.shape[1]))
        with torch.no_grad():
            net.W.copy_(torch.from_numpy(inv @ Em.T).expand_as(net.W))
            net.B.copy_(torch.from_numpy(mu * inv).expand_as(net.B))
            net.theta.fill_(lam / mu)
            net.eta.fill_(1.0)
            net.E.copy_(torch.from_numpy(Em))
        return net

    def _layer(self, k: int) -> int:
        return 0 if self.tied else k

    def iterate(self, y: torch.Tensor, W: torch.Tensor | None = None, return_all: bool = False) -> Any:
        """Run the ``K`` layers from ``z_0 = d_0 = 0``.

        Parameters
        ----------
        y : Tensor, shape (n, bands)
        W : Tensor, optional
            Replaces the parameter ``W`` (same shape).
        return_all : bool
            Also return the final ``x`` and ``d``.

        Returns
        -------
        z_K : Tensor (n, R), non-negative, not normalised; or ``(x_K, z_K, d_K)`` with ``return_all``.
        """
        self._check_input(y)
        n, R = y.shape[0], self.n_endmembers
        z = y.new_zeros(n, R)
        d = y.new_zeros(n, R)
        x = z
        W = self.W if W is None else W
        for k in range(self.layers):
            i = self._layer(k)
            x = y @ W[i].T + (z + d) @ self.B[i].T
            z = _soft_nonneg(x - d, self.theta[i])
            d = d - self.eta[i] * (x - z)
        return (x, z, d) if return_all else z

    def unmix_image(self, Y: torch.Tensor) -> torch.Tensor:
        """Abundances ``(R, H, W)`` of a finite image ``(bands, H, W)``: :meth:`forward`, computed in the
        contiguous ``(R, pixels)`` layout.

        The ``(pixels, bands)`` view that the base class hands to :meth:`forward` is a transpose, and a
        matrix product with it took 65 ms instead of 4.5 ms on a contiguous copy (512² x 200); here
        every layer's ``W_k y`` comes from one product of the stacked ``W`` with the image as it lies.
        """
        b, h, w = Y.shape
        self.check_bands(b)
        R, L = self.n_endmembers, self._n_sets
        WY = (self.W.reshape(L * R, b) @ Y.reshape(b, h * w)).view(L, R, h * w)
        z = Y.new_zeros(R, h * w)
        d = torch.zeros_like(z)
        for k in range(self.layers):
            i = self._layer(k)
            x = torch.addmm(WY[i], self.B[i], z + d)
            v = x - d
            # _soft_nonneg(v, theta) for a non-negative output: max(v - max(theta, 0), 0), same values
            z = (v - self.theta[i].clamp_min(0)).clamp_min_(0)
            d = d - self.eta[i] * (x - z)
        return self.normalize(z.T).T.reshape(R, h, w)
