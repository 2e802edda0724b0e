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

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from .base import UnmixModel
from .losses import PAPER_ALPHAS, CompositeLoss
from .registry import register_model

#: Adam defaults of :meth:`UADMMNet.fit` / :meth:`MNNAE.fit` (``optimizer="adam"``), chosen by
#: measurement on Jasper Ridge (docs/uadmm.md).
DEFAULT_EPOCHS = 300
DEFAULT_LR = 1e-3
#: :meth:`UADMMNet.fit` defaults (``optimizer="lbfgs"``): full-batch L-BFGS iterations, ``W`` trained in
#: the whitened top-6 singular subspace of the training spectra with a ridge of 1e-3 (docs/uadmm.md).
LBFGS_EPOCHS = 500
LBFGS_LR = 1.0
DEFAULT_SUBSPACE = 6
DEFAULT_RIDGE = 1e-3
#: The paper's training settings (sec. 5.1): Adam, lr 1e-4, batch 64, 300 epochs.
PAPER_LR = 1e-4


def _soft_nonneg(v: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``max(soft(v, max(theta, 0)), 0)`` elementwise, written as SUnSAL writes it (so both agree).

    The learnt threshold is clamped at 0: ``soft(v, theta)`` with ``theta < 0`` is no longer a shrinkage
    but adds ``|theta|`` to every positive entry, a jump at ``v = 0``. Left free, the thresholds of both
    networks drifted negative during training on noisy data (15 dB) and the training *and* test RMSE
    then rose steadily with more Adam steps (docs/uadmm.md); with the clamp they decrease.
    """
    return (torch.sign(v) * (v.abs() - theta.clamp_min(0)).clamp_min(0)).clamp_min(0)


def _endmember_inputs(E: Any) -> tuple[np.ndarray, list[str], list[float] | None]:
    """(bands, R) float64 matrix, endmember names, wavelengths (nm) or None, from a DataArray or array."""
    import xarray as xr

    from .._cube import as_endmembers

    Ed = as_endmembers(E)
    wl = None
    if isinstance(E, xr.DataArray) and "wavelength" in Ed.coords and Ed["wavelength"].dims == ("band",):
        w = np.asarray(Ed["wavelength"].values, dtype=np.float64)
        if np.isfinite(w).all():
            wl = [float(v) for v in w]
    return np.asarray(Ed.values, dtype=np.float64), [str(n) for n in Ed.endmember.values], wl


def _labelled_pixels(spectra: Any, abundances: Any) -> tuple[Any, Any]:
    """DataArrays with ``band`` / ``endmember`` dims -> ``(n, bands)``, ``(n, R)`` arrays of labelled pixels.

    Other inputs pass through unchanged. Two DataArrays are flattened in the same pixel order (the
    abundances are transposed to the spectra's pixel dims, aligned on their coordinates); pixels NaN in
    either are dropped.
    """
    import xarray as xr

    ys = isinstance(spectra, xr.DataArray) and "band" in spectra.dims
    ab = isinstance(abundances, xr.DataArray) and "endmember" in abundances.dims
    if ys and ab:
        pix = [d for d in spectra.dims if d != "band"]
        if sorted(pix) != sorted(d for d in abundances.dims if d != "endmember"):
            raise ValueError(f"spectra dims {spectra.dims} and abundances dims {abundances.dims} do not "
                             "share the same pixel dims")
        spectra, abundances = xr.align(spectra, abundances, join="inner", exclude=["band", "endmember"])
        abundances = abundances.transpose(*pix, "endmember")
    if ys:
        v = np.asarray(spectra.transpose(..., "band").values, dtype=np.float64)
        spectra = v.reshape(-1, v.shape[-1])
    if ab:
        v = np.asarray(abundances.transpose(..., "endmember").values, dtype=np.float64)
        abundances = v.reshape(-1, v.shape[-1])
    if ys and ab:
        keep = np.isfinite(spectra).all(1) & np.isfinite(abundances).all(1)
        if not keep.any():
            raise ValueError("no pixel is labelled (finite in both the spectra and the abundances)")
        spectra, abundances = spectra[keep], abundances[keep]
    return spectra, abundances


def _folding(callback: Callable[[int, Any], Any] | None, net: Any, W0: torch.Tensor, V: torch.Tensor,
             P: torch.Tensor) -> Callable[[int, Any], Any] | None:
    """Wrap a :meth:`fit` callback so that it sees ``net`` with the current subspace ``W`` written in."""
    if callback is None:
        return None

    def cb(epoch: int, _model: Any) -> Any:
        was = net.training
        net.eval()
        try:
            with torch.no_grad():
                net.W.copy_(W0 + V @ P.T)
            return callback(epoch, net)
        finally:
            net.train(was)

    return cb


class _UnrolledNet(UnmixModel):
    """Shared plumbing: endmember buffer, ASC normalisation, supervised :meth:`fit`."""

    #: loss weights (MSE, angle distance, symmetric KL) used by :meth:`fit` unless given.
    default_alphas: ClassVar[tuple[float, float, float]] = PAPER_ALPHAS

    #: :meth:`fit` defaults for ``optimizer``, ``subspace`` and ``ridge`` (see there).
    default_optimizer: ClassVar[str] = "adam"
    default_subspace: ClassVar[int | None] = None
    default_ridge: ClassVar[float] = 0.0

    def __init__(self, n_bands: int, n_endmembers: int, endmember_names: list[str] | None = None,
                 wavelengths: list[float] | None = None, *, layers: int = 2, tied: bool = False) -> None:
        super().__init__(n_bands, n_endmembers, endmember_names, wavelengths)
        layers = int(layers)
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.layers = layers
        self.tied = bool(tied)
        self.register_buffer("E", torch.zeros(self.n_bands, self.n_endmembers))

    @property
    def _n_sets(self) -> int:
        return 1 if self.tied else self.layers

    def endmember_matrix(self) -> torch.Tensor:
        """The endmembers the network was warm-started from, ``(bands, R)``."""
        return self.E

    def _check_input(self, y: torch.Tensor) -> None:
        if y.ndim != 2:
            raise ValueError(f"expected spectra of shape (n_pixels, {self.n_bands}); got {tuple(y.shape)}")
        self.check_bands(y.shape[-1])

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Divide non-negative rows ``(n, R)`` by their sum; an all-zero row becomes uniform ``1/R``,
        a row with NaN or inf stays NaN (never a plausible-looking uniform row)."""
        s = z.sum(-1, keepdim=True)
        tiny = torch.finfo(z.dtype).tiny
        zero = torch.where(torch.isfinite(s), 1.0 / self.n_endmembers, torch.nan).to(z.dtype)
        return torch.where(torch.isfinite(s) & (s > tiny), z / s.clamp_min(tiny), zero.expand_as(z))

    def iterate(self, y: torch.Tensor, W: torch.Tensor | None = None) -> torch.Tensor:
        """The last layer's non-negative output ``(n, R)`` before the sum-to-one normalisation.

        ``W`` (shaped like ``self.W``) replaces the network's ``W`` (used by :meth:`fit`'s subspace
        parametrisation)."""
        raise NotImplementedError

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Abundances of spectra.

        Parameters
        ----------
        y : Tensor, shape (n_pixels, bands)
            Reflectance in the units of the endmembers.

        Returns
        -------
        Tensor, shape (n_pixels, R): non-negative, rows summing to one.
        """
        return self.normalize(self.iterate(y))

    def fit(
        self,
        spectra: Any,
        abundances: Any,
        *,
        epochs: int | None = None,
        batch_size: int = 64,
        lr: float | None = None,
        seed: int | None = None,
        alphas: Sequence[float] | None = None,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        weight_decay: float = 0.0,
        validation: tuple[Any, Any] | None = None,
        callback: Callable[[int, Any], dict[str, float] | None] | None = None,
        progress: bool | None = None,
        sum_tol: float = 1e-3,
        schedule: str | None = None,
        optimizer: str | None = None,
        subspace: int | None | str = "default",
        ridge: float | None = None,
    ) -> dict[str, Any]:
        """Supervised training on labelled pixels, in place.

        :class:`UADMMNet` defaults: full-batch L-BFGS, 500 iterations, ``W`` updated in the whitened
        6-dimensional singular subspace of the training spectra with a ridge of 1e-3 (measured on
        Jasper Ridge, docs/uadmm.md). :class:`MNNAE` defaults: Adam, lr 1e-3, batch 64, 300 epochs, ``W``
        trained directly. The paper's setting is ``optimizer="adam", lr=PAPER_LR, epochs=300,
        subspace=None, ridge=0``.

        Parameters
        ----------
        spectra : array-like (numpy, torch), shape (n_pixels, bands); or DataArray
            Training spectra, one pixel per row, same units as the endmembers. A DataArray with a
            ``band`` dim (e.g. a cube ``(band, y, x)``) is flattened to pixels.
        abundances : array-like, shape (n_pixels, R); or DataArray
            Their abundances: non-negative, rows summing to one (within ``sum_tol``). A DataArray with
            an ``endmember`` dim (e.g. ``(endmember, y, x)``, aligned with a cube given as ``spectra``) is
            flattened the same way; with two DataArrays, pixels that are NaN in either (unlabelled) are
            dropped.
        epochs : int, optional
            Passes over the training set: Adam epochs, or L-BFGS iterations (each one or more full-batch
            evaluations). Default 300 (Adam) / 500 (L-BFGS).
        batch_size : int
            Pixels per Adam step (unused by L-BFGS, which is full-batch).
        lr : float, optional
            Adam learning rate, default 1e-3 (the paper's setting is ``PAPER_LR = 1e-4``); L-BFGS initial
            step, default 1.
        seed : int, optional
            Reproducible batch order.
        alphas : (float, float, float), optional
            Weights of MSE, angle distance and symmetric KL in the loss (eq. 10). Default
            ``type(self).default_alphas``: the paper's ``(1, 1e-7, 1e-5)`` for U-ADMM-AENet, plain MSE
            ``(1, 0, 0)`` for MNN-AE.
        loss : callable, optional
            ``loss(pred, target) -> scalar`` replacing the composite loss (``alphas`` is then ignored).
        weight_decay : float
            Adam weight decay.
        validation : (spectra, abundances), optional
            Held-out pairs; ``history["val_loss"]`` records their loss after every epoch.
        callback : callable, optional
            ``callback(epoch, model) -> {name: float} | None`` after every epoch (eval mode, no grad);
            the values go to ``history[name]``. E.g. a test RMSE per epoch.
        progress : bool, optional
            tqdm bar over epochs (default: when stderr is a terminal).
        sum_tol : float
            Tolerance of the sum-to-one / non-negativity check on ``abundances``.
        schedule : {None, "cosine"}
            Learning-rate schedule (Adam only; see :func:`xr_unmix.models._train.fit_supervised`).
        optimizer : {"adam", "lbfgs"}, optional
            Default ``type(self).default_optimizer`` (``"lbfgs"`` for UADMMNet, ``"adam"`` for MNNAE).
        subspace : int or None, optional
            Train ``W_k = W_k0 + V_k P^T`` instead of ``W_k`` directly: ``P`` (bands, ``subspace``) spans
            the top right-singular vectors of the (uncentred) training spectra ``Y`` (n, bands), each
            column divided by the RMS of the spectra along it (``s_j / sqrt(n)``: whitened); ``V_k``
            starts at 0; ``W`` is written back after training (the network's architecture and saved
            form are unchanged). ``None``: train ``W`` directly. Default ``type(self).default_subspace``
            (6 for UADMMNet, None for MNNAE); clipped to the rank of the training spectra.
        ridge : float, optional
            Adds ``ridge * sum_k mean_i ||(W_k - W_k0) y_i||^2`` to the loss: the mean squared change
            of each layer's ``W y`` over the training spectra, relative to the warm start (with
            ``subspace`` this is ``ridge * ||V||^2``). Default ``type(self).default_ridge`` (1e-3 for
            UADMMNet, 0 for MNNAE).

        Returns
        -------
        dict
            ``"loss"`` (per-epoch mean training loss), ``"time_s"``, ``"epochs"``, ``"lr"``,
            ``"batch_size"``, ``"seed"``, ``"n_samples"``, ``"val_loss"`` / callback keys when asked.

        Raises
        ------
        ValueError
            Shapes that do not match the model, NaN, negative abundances or rows not summing to one.
        """
        from ._train import check_pairs, fit_supervised

        optimizer = self.default_optimizer if optimizer is None else optimizer
        if optimizer not in ("adam", "lbfgs"):
            raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
        if epochs is None:
            epochs = LBFGS_EPOCHS if optimizer == "lbfgs" else DEFAULT_EPOCHS
        if lr is None:
            lr = LBFGS_LR if optimizer == "lbfgs" else DEFAULT_LR
        if isinstance(subspace, str):
            if subspace != "default":
                raise ValueError(f"subspace must be an int >= 1 or None, got {subspace!r}")
            subspace = self.default_subspace
        if subspace is not None and int(subspace) < 1:
            raise ValueError(f"subspace must be an int >= 1 or None, got {subspace!r}")
        ridge = self.default_ridge if ridge is None else float(ridge)
        if not ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        p = next(self.parameters())
        spectra, abundances = _labelled_pixels(spectra, abundances)
        Y, A = check_pairs(spectra, abundances, n_bands=self.n_bands, n_endmembers=self.n_endmembers,
                           sum_tol=sum_tol, dtype=p.dtype, device=p.device)
        val = None
        if validation is not None:
            val = check_pairs(validation[0], validation[1], n_bands=self.n_bands,
                              n_endmembers=self.n_endmembers, sum_tol=sum_tol, dtype=p.dtype, device=p.device)
        loss_fn = loss if loss is not None else CompositeLoss(
            self.default_alphas if alphas is None else alphas)
        W0 = self.W.detach().clone()
        model, params, penalty, V, P = self._trainable_w(Y, W0, subspace, ridge)
        try:
            history = fit_supervised(model, Y, A, epochs=epochs, batch_size=batch_size, lr=lr, loss=loss_fn,
                                     seed=seed, weight_decay=weight_decay, validation=val,
                                     callback=callback if V is None else _folding(callback, self, W0, V, P),
                                     progress=progress, desc=f"{type(self).__name__} fit",
                                     schedule=schedule, params=params, optimizer=optimizer, penalty=penalty)
        finally:
            if V is not None:
                with torch.no_grad():
                    self.W.copy_(W0 + V @ P.T)
        history["alphas"] = None if loss is not None else list(getattr(loss_fn, "alphas", ()))
        history.update(optimizer=optimizer, subspace=None if V is None else int(V.shape[-1]), ridge=ridge)
        self.eval()
        return history

    def _trainable_w(self, Y: torch.Tensor, W0: torch.Tensor, subspace: int | None,
                     ridge: float) -> tuple[Any, Any, Any, Any, Any]:
        """``(model, params, penalty, V, P)`` for :meth:`fit`: ``W`` trained directly, or as
        ``W0 + V P^T`` in the whitened top-``subspace`` singular directions ``P`` of ``Y`` (n, bands)."""
        p = next(self.parameters())
        if subspace is None:
            if not ridge:
                return self, None, None, None, None

            def response() -> torch.Tensor:
                return ridge * ((self.W - W0) @ Y.T).pow(2).sum((1, 2)).sum() / Y.shape[0]

            return self, None, response, None, None
        # not centred: measured better than centred on Jasper Ridge (docs/uadmm.md)
        _, S, Vh = torch.linalg.svd(Y.double(), full_matrices=False)
        tol = float(S[0]) * max(Y.shape) * torch.finfo(S.dtype).eps if S.numel() else 0.0
        r = min(int(subspace), int((S > tol).sum()))
        if r < 1:
            raise ValueError("the training spectra span no direction to train W in (all zero?)")
        P = (Vh[:r].T / (S[:r] / Y.shape[0] ** 0.5)).to(p.dtype)  # (bands, r), whitened directions
        V = torch.nn.Parameter(W0.new_zeros(W0.shape[0], W0.shape[1], r))

        def model(y: torch.Tensor) -> torch.Tensor:
            return self.normalize(self.iterate(y, W=W0 + V @ P.T))

        def penalty() -> torch.Tensor:
            return ridge * V.pow(2).sum()

        params = [V] + [q for name, q in self.named_parameters() if name != "W"]
        return model, params, penalty if ridge else None, V, P

    @torch.no_grad()
    def predict(self, spectra: Any, batch_size: int = 65536) -> np.ndarray:
        """Abundances ``(n_pixels, R)`` (numpy, float64) of spectra ``(n_pixels, bands)``, in eval mode."""
        from ._train import as_tensor

        p = next(self.parameters())
        Y = as_tensor(spectra, "spectra", p.dtype, p.device)
        self._check_input(Y)
        was = self.training
        self.eval()
        try:
            out = [self(Y[i:i + batch_size]) for i in range(0, Y.shape[0], batch_size)]
        finally:
            self.train(was)
        return torch.cat(out).cpu().double().numpy() if out else np.zeros((0, self.n_endmembers))

    def extra_repr(self) -> str:
        return (f"bands={self.n_bands}, endmembers={self.n_endmembers}, layers={self.layers}, "
                f"tied={self.tied}")


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
