"""Supervised training of the unrolled networks (U-ADMM-AENet, MNN-AE): defaults, labelled pixels,
the whitened-subspace parametrisation of ``W`` and the call into the shared training loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ._train import check_pairs, fit_supervised
from .losses import CompositeLoss

#: Adam defaults of the unrolled networks' ``fit`` (``optimizer="adam"``), chosen by
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

def trainable_w(net: Any, Y: torch.Tensor, W0: torch.Tensor, subspace: int | None,
                 ridge: float) -> tuple[Any, Any, Any, Any, Any]:
    """``(model, params, penalty, V, P)`` for :func:`fit_unrolled`: ``W`` trained directly, or as
    ``W0 + V P^T`` in the whitened top-``subspace`` singular directions ``P`` of ``Y`` (n, bands)."""
    p = next(net.parameters())
    if subspace is None:
        if not ridge:
            return net, None, None, None, None

        def response() -> torch.Tensor:
            return ridge * ((net.W - W0) @ Y.T).pow(2).sum((1, 2)).sum() / Y.shape[0]

        return net, None, response, None, None
    # not centred: measured better than centred on Jasper Ridge (docs/uadmm.md)
    _, S, Vh = torch.linalg.svd(Y.double(), full_matrices=False)
    tol = float(S[0]) * max(Y.shape) * torch.finfo(S.dtype).eps if S.numel() else 0.0
    r = min(int(subspace), int((S > tol).sum()))
    if r < 1:
        raise ValueError("the training spectra span no direction to train W in (all zero?)")
    P = (Vh[:r].T / (S[:r] / Y.shape[0] ** 0.5)).to(p.dtype)  # (bands, r), whitened directions
    V = torch.nn.Parameter(W0.new_zeros(W0.shape[0], W0.shape[1], r))

    def model(y: torch.Tensor) -> torch.Tensor:
        return net.normalize(net.iterate(y, W=W0 + V @ P.T))

    def penalty() -> torch.Tensor:
        return ridge * V.pow(2).sum()

    params = [V] + [q for name, q in net.named_parameters() if name != "W"]
    return model, params, penalty if ridge else None, V, P

def fit_unrolled(net: Any, spectra: Any, abundances: Any, *, epochs: int | None = None,
                 batch_size: int = 64, lr: float | None = None, seed: int | None = None,
                 alphas: Sequence[float] | None = None,
                 loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 weight_decay: float = 0.0, validation: tuple[Any, Any] | None = None,
                 callback: Callable[[int, Any], dict[str, float] | None] | None = None,
                 progress: bool | None = None, sum_tol: float = 1e-3, schedule: str | None = None,
                 optimizer: str | None = None, subspace: int | None | str = "default",
                 ridge: float | None = None) -> dict[str, Any]:
    """Supervised training of an unrolled network ``net`` in place: the body of
    :meth:`xr_unmix.models.unrolled._UnrolledNet.fit` (see there for the parameters), on the shared loop
    :func:`xr_unmix.models._train.fit_supervised`."""
    optimizer = net.default_optimizer if optimizer is None else optimizer
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
    if epochs is None:
        epochs = LBFGS_EPOCHS if optimizer == "lbfgs" else DEFAULT_EPOCHS
    if lr is None:
        lr = LBFGS_LR if optimizer == "lbfgs" else DEFAULT_LR
    if isinstance(subspace, str):
        if subspace != "default":
            raise ValueError(f"subspace must be an int >= 1 or None, got {subspace!r}")
        subspace = net.default_subspace
    if subspace is not None and int(subspace) < 1:
        raise ValueError(f"subspace must be an int >= 1 or None, got {subspace!r}")
    ridge = net.default_ridge if ridge is None else float(ridge)
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    p = next(net.parameters())
    spectra, abundances = _labelled_pixels(spectra, abundances)
    Y, A = check_pairs(spectra, abundances, n_bands=net.n_bands, n_endmembers=net.n_endmembers,
                       sum_tol=sum_tol, dtype=p.dtype, device=p.device)
    val = None
    if validation is not None:
        val = check_pairs(validation[0], validation[1], n_bands=net.n_bands,
                          n_endmembers=net.n_endmembers, sum_tol=sum_tol, dtype=p.dtype, device=p.device)
    loss_fn = loss if loss is not None else CompositeLoss(
        net.default_alphas if alphas is None else alphas)
    W0 = net.W.detach().clone()
    model, params, penalty, V, P = trainable_w(net, Y, W0, subspace, ridge)
    try:
        history = fit_supervised(model, Y, A, epochs=epochs, batch_size=batch_size, lr=lr, loss=loss_fn,
                                 seed=seed, weight_decay=weight_decay, validation=val,
                                 callback=callback if V is None else _folding(callback, net, W0, V, P),
                                 progress=progress, desc=f"{type(net).__name__} fit",
                                 schedule=schedule, params=params, optimizer=optimizer, penalty=penalty)
    finally:
        if V is not None:
            with torch.no_grad():
                net.W.copy_(W0 + V @ P.T)
    history["alphas"] = None if loss is not None else list(getattr(loss_fn, "alphas", ()))
    history.update(optimizer=optimizer, subspace=None if V is None else int(V.shape[-1]), ridge=ridge)
    net.eval()
    return history
