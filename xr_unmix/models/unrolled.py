"""The plumbing the unrolled networks share (:class:`~xr_unmix.models.uadmm.UADMMNet`,
:class:`~xr_unmix.models.mnnae.MNNAE`): the endmember buffer, ASC normalisation, the clamped
soft threshold, ``predict`` and the supervised ``fit`` (run by :mod:`.unrolled_training`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from .base import UnmixModel
from .losses import PAPER_ALPHAS
from .unrolled_training import fit_unrolled


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
        return fit_unrolled(self, spectra, abundances, epochs=epochs, batch_size=batch_size, lr=lr,
                            seed=seed, alphas=alphas, loss=loss, weight_decay=weight_decay,
                            validation=validation, callback=callback, progress=progress, sum_tol=sum_tol,
                            schedule=schedule, optimizer=optimizer, subspace=subspace, ridge=ridge)

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
