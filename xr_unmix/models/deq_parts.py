"""The parts DEQ-Unmix is built from, each usable and tested on its own.

- :class:`SolverConfig`: how the fixed point is found and differentiated (a small frozen dataclass);
- the **data step** :func:`step_matrix`: projected gradient (``eta I``, ``eta = step / ||M||_2^2``) or
  the damped, constrained Newton preconditioner (``precondition > 0``);
- the **projection** :func:`project`: every pixel onto the probability simplex (ANC + ASC);
- the **learned correction network** :class:`CorrectionNet`: a small CNN whose last layer starts at
  zero, so that the untrained operator is the analytic step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from ..solvers.sunsal import project_simplex

#: Most fixed-point (and backward) iterations a model may be configured with: a bound on the work of
#: one solve, whatever a (tampered) config says.
MAX_ITER = 10_000
BACKWARDS = ("implicit", "jfb", "unrolled")


@dataclass(frozen=True)
class SolverConfig:
    """Forward (Anderson) and backward solve settings of a DEQ.

    Parameters
    ----------
    max_iter, tol : int, float
        Forward solve: iteration limit (at most :data:`MAX_ITER`) and relative-residual tolerance.
    anderson_m, anderson_lam, anderson_beta : int, float, float
        Anderson history, relative regularisation and damping.
    backward : {"implicit", "jfb", "unrolled"}
        Gradient: implicit differentiation, Jacobian-free, or backprop through ``max_iter`` unrolled
        plain iterations (memory grows with iterations; for comparisons).
    b_max_iter, b_tol : int, float
        Backward (implicit) solve: iteration limit (at most :data:`MAX_ITER`) and tolerance.
    fcls_iter : int
        ADMM iterations of the FCLS start.
    """

    #: 300, not 100: chosen on the TUNE scenes of recipes/eval_deq.py (with 100, 2 ConvergenceWarnings
    #: over 12 scene x seed runs; with 300 none, same aRMSE); confirmed on the REPORT scenes (docs/deq.md)
    max_iter: int = 300
    tol: float = 1e-4
    anderson_m: int = 5
    anderson_lam: float = 1e-4
    anderson_beta: float = 1.0
    backward: str = "implicit"
    b_max_iter: int = 10
    b_tol: float = 1e-4
    fcls_iter: int = 500

    def __post_init__(self) -> None:
        if self.backward not in BACKWARDS:
            raise ValueError(f"backward must be 'implicit', 'jfb' or 'unrolled', got {self.backward!r}")
        if not (1 <= self.max_iter <= MAX_ITER and 1 <= self.b_max_iter <= MAX_ITER):
            raise ValueError(f"max_iter and b_max_iter must be in [1, {MAX_ITER}], got "
                             f"{self.max_iter} and {self.b_max_iter}")
        if not (math.isfinite(self.tol) and self.tol >= 0 and math.isfinite(self.b_tol)
                and self.b_tol >= 0):
            raise ValueError(f"tol and b_tol must be finite and >= 0, got {self.tol} and {self.b_tol}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SolverConfig:
        """Pick this dataclass's fields out of ``options`` (a model config), typed."""
        types = {"int": int, "float": float, "str": str}
        return cls(**{f.name: types[str(f.type)](options[f.name]) for f in fields(cls)
                      if f.name in options})

    def as_config(self) -> dict[str, Any]:
        """The fields as a flat JSON-able dict (how a model file stores them)."""
        return asdict(self)

    def forward_kwargs(self, max_iter: int | None = None, tol: float | None = None,
                       solver: str = "anderson") -> dict[str, Any]:
        """Keyword arguments of :func:`xr_unmix.solvers.fixed_point.deq_fixed_point`'s forward solve."""
        kw: dict[str, Any] = {"max_iter": int(self.max_iter if max_iter is None else max_iter),
                              "tol": float(self.tol if tol is None else tol)}
        if solver == "anderson":
            kw.update(m=self.anderson_m, lam=self.anderson_lam, beta=self.anderson_beta)
        return kw


def step_size(G: torch.Tensor, step: float) -> torch.Tensor:
    """``eta = step / ||G||_2`` for the data term's ``(R, R)`` matrix ``G`` (no gradient), 0-d."""
    with torch.no_grad():
        L = torch.linalg.matrix_norm(G.detach().double(), ord=2)
    return (step / L.clamp_min(1e-30)).to(G.dtype)


def step_matrix(G: torch.Tensor, *, step: float = 1.0, precondition: float = 0.0) -> torch.Tensor:
    """The ``(R, R)`` matrix that multiplies the data-term gradient ``G A - M^T Y`` in one step.

    Parameters
    ----------
    G : Tensor (R, R)
        The data term's matrix ``M^T M``.
    step : float
        ``eta ||G||_2`` (1: the classical ``1/L`` step).
    precondition : float
        ``0``: projected gradient, ``eta I``. ``delta > 0``: ``step K`` with ``K`` the inverse of
        ``G + delta ||G||_2 I`` restricted to the sum-to-zero subspace (``K 1 = 0``: the sum-to-one
        constraint is kept before the projection), differentiable in ``G``.
    """
    R = G.shape[0]
    eta = step_size(G, step)
    eye = torch.eye(R, dtype=torch.float64, device=G.device)
    if precondition <= 0 or R < 2:
        return eta * eye.to(G.dtype)
    lmax = step / eta.double()  # ||G||_2 (no gradient)
    H = G.double() + precondition * lmax * eye
    Z = torch.linalg.qr((eye - 1.0 / R)[:, : R - 1])[0]  # orthonormal basis of sum-to-zero vectors
    K = Z @ torch.linalg.solve(Z.T @ H @ Z, Z.T)
    return (step * K).to(G.dtype)


def project(Z: torch.Tensor) -> torch.Tensor:
    """``(B, R, ...)`` states onto the probability simplex over dim 1 (exact Euclidean projection)."""
    return project_simplex(Z, dim=1)


class CorrectionNet(nn.Module):
    """The learned correction ``C_theta``: ``layers`` convolutions ``2R -> hidden -> ... -> R``
    (replicate padding, leaky ReLU between), the last one zero at the start.

    Input ``(B, 2R, H, W)`` (the state and the scaled gradient step), output ``(B, R, H, W)``.
    ``kernel_size=1`` makes it pixel-wise.
    """

    def __init__(self, r: int, hidden: int, layers: int = 3, kernel_size: int = 3) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"cnn_layers must be >= 1, got {layers}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        pad = kernel_size // 2
        chans = [2 * r] + [hidden] * (layers - 1) + [r]
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], kernel_size, padding=pad, padding_mode="replicate")
            for i in range(layers)
        )
        nn.init.zeros_(self.convs[-1].weight)
        nn.init.zeros_(self.convs[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = torch.nn.functional.leaky_relu(x, 0.1)
        return x
