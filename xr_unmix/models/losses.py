"""Losses for training unmixing networks (stable API, shared by every model in :mod:`xr_unmix.models`).

Every function takes batched tensors with the quantity on the **last** axis, shape ``(n, R)`` for
abundances (``R`` endmembers) or ``(n, bands)`` for spectra, and returns a scalar tensor averaged over
the ``n`` rows, so it can be used directly as a training loss and differentiated safely everywhere
(no NaN/inf gradient at zero abundances, identical vectors or all-zero rows).

Public API
----------
- :func:`mse` -- ``1/n sum_i ||a_i - b_i||_2^2`` (eq. 11 of the U-ADMM-AENet paper: summed over the
  last axis, averaged over rows; *not* ``torch.nn.functional.mse_loss``, which also averages over ``R``).
- :func:`angle_distance` -- mean ``arccos`` of the cosine between rows, radians (eq. 12).
- :func:`spectral_angle_loss` -- the same, named for spectra (reconstruction vs. observed pixel).
- :func:`symmetric_kl` -- mean ``KL(a|b) + KL(b|a)`` over rows (eq. 13), safe at zeros.
- :func:`composite_loss` / :class:`CompositeLoss` -- ``alpha1*mse + alpha2*angle + alpha3*symKL``
  (eq. 10), defaults ``PAPER_ALPHAS = (1.0, 1e-7, 1e-5)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: The U-ADMM-AENet paper's weights (alpha1 MSE, alpha2 angle distance, alpha3 symmetric KL), sec. 4.2.
PAPER_ALPHAS: tuple[float, float, float] = (1.0, 1e-7, 1e-5)

_EPS = 1e-7


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over the last axis, averaged over the rest.

    Parameters
    ----------
    pred, target : Tensor, shape (n, R)

    Returns
    -------
    Tensor, scalar: ``mean_i ||pred_i - target_i||_2^2``.
    """
    _check_pair(pred, target)
    return (pred - target).pow(2).sum(-1).mean()


def angle_distance(pred: torch.Tensor, target: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Mean angle between corresponding rows, in radians.

    The cosine is clamped to ``[-1 + eps, 1 - eps]`` and the norms floored at ``eps``, so the gradient
    stays finite for identical rows (where ``d arccos / dc`` diverges) and for all-zero rows.

    Parameters
    ----------
    pred, target : Tensor, shape (n, D)
        Abundances (``D = R``) or spectra (``D = bands``).
    eps : float

    Returns
    -------
    Tensor, scalar in ``[0, pi]``.
    """
    _check_pair(pred, target)
    num = (pred * target).sum(-1)
    den = pred.norm(dim=-1).clamp_min(eps) * target.norm(dim=-1).clamp_min(eps)
    cos = (num / den).clamp(-1.0 + eps, 1.0 - eps)
    return torch.arccos(cos).mean()


def spectral_angle_loss(reconstruction: torch.Tensor, spectra: torch.Tensor,
                        eps: float = _EPS) -> torch.Tensor:
    """Mean spectral angle (radians) between reconstructed and observed spectra, rows ``(n, bands)``.

    Scale-invariant reconstruction loss for unsupervised training (e.g. ``E @ a`` vs. the pixel).
    Same as :func:`angle_distance`.
    """
    return angle_distance(reconstruction, spectra, eps)


def symmetric_kl(pred: torch.Tensor, target: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Mean symmetric Kullback-Leibler divergence ``KL(p|q) + KL(q|p)`` between rows.

    Uses the identity ``KL(p|q) + KL(q|p) = sum_j (p_j - q_j)(log p_j - log q_j)`` with both arguments
    floored at ``eps`` inside the logs: finite (and with finite gradient) when abundances are exactly
    zero, and exactly 0 when ``pred == target``. Rows are used as given (both should sum to one; they
    are not renormalised).

    Parameters
    ----------
    pred, target : Tensor, shape (n, R), non-negative
    eps : float

    Returns
    -------
    Tensor, scalar >= 0 (for non-negative inputs).
    """
    _check_pair(pred, target)
    lp = torch.log(pred.clamp_min(eps))
    lq = torch.log(target.clamp_min(eps))
    return ((pred - target) * (lp - lq)).sum(-1).mean()


def composite_loss(pred: torch.Tensor, target: torch.Tensor,
                   alphas: Sequence[float] = PAPER_ALPHAS) -> torch.Tensor:
    """The U-ADMM-AENet loss (eq. 10): ``a1 * mse + a2 * angle_distance + a3 * symmetric_kl``.

    Terms whose weight is 0 are skipped (not computed).

    Parameters
    ----------
    pred, target : Tensor, shape (n, R)
        Estimated and true abundances.
    alphas : (float, float, float)
        ``(alpha1, alpha2, alpha3)``; ``(1, 0, 0)`` is plain MSE.

    Returns
    -------
    Tensor, scalar.
    """
    a1, a2, a3 = _check_alphas(alphas)
    total = pred.new_zeros(())
    if a1:
        total = total + a1 * mse(pred, target)
    if a2:
        total = total + a2 * angle_distance(pred, target)
    if a3:
        total = total + a3 * symmetric_kl(pred, target)
    return total


def _check_alphas(alphas: Sequence[float]) -> tuple[float, float, float]:
    a = tuple(float(v) for v in alphas)
    if len(a) != 3 or any(v < 0 or v != v for v in a):
        raise ValueError(f"alphas must be three non-negative weights (mse, angle, symmetric KL); got {alphas!r}")
    return a  # type: ignore[return-value]


class CompositeLoss(torch.nn.Module):
    """Module form of :func:`composite_loss`: ``CompositeLoss(alphas)(pred, target)`` -> scalar."""

    def __init__(self, alphas: Sequence[float] = PAPER_ALPHAS) -> None:
        super().__init__()
        self.alphas = _check_alphas(alphas)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return composite_loss(pred, target, self.alphas)

    def extra_repr(self) -> str:
        return f"alphas={self.alphas}"
