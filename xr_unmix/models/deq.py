"""DEQ-Unmix: abundances as the equilibrium of a learned projected-gradient operator.

The abundances ``A`` of an image are the fixed point of::

    A = P( A - eta * G_theta(A; Y, M) ),      G_theta = M^T (M A - Y) + C_theta([A, eta M^T (M A - Y)]) / eta

where ``M`` (bands x R) are the endmembers, ``P`` the exact Euclidean projection of every pixel onto the
probability simplex (ANC + ASC), ``eta = step / ||M||_2^2`` and ``C_theta`` a small spectral-spatial CNN
(3x3 convolutions) whose last layer starts at zero. Untrained, the operator is therefore exactly projected
gradient descent on ``1/2 ||Y - M A||^2``, whose fixed point is the FCLS solution.

The parts live in :mod:`xr_unmix.models.deq_parts` (data step, projection, correction network, solver
configuration), the training in :mod:`xr_unmix.models.deq_training` (on the shared loop of
:mod:`xr_unmix.models.training`), the contraction diagnostics in :mod:`xr_unmix.models.deq_contraction`.

The fixed point is found by Anderson acceleration from FCLS (:mod:`xr_unmix.solvers.fixed_point`);
gradients by implicit differentiation (memory of one operator application), the Jacobian-free
approximation, or -- for comparisons -- backpropagation through every unrolled iteration.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from ..solvers.fixed_point import BackwardStats, FixedPointInfo, deq_fixed_point
from ..solvers.sunsal import fcls as _fcls
from ..tiling import TileSpec
from . import deq_contraction, deq_training
from .base import SolveCounter, UnmixModel
from .deq_parts import (
    MAX_ITER,  # noqa: F401  (importable from here)
    PROJECTIONS,
    CorrectionNet,
    SolverConfig,
    abundances_from_state,
    project,
    step_matrix,
    step_size,
    whitened_basis,
)
from .registry import register_model

#: Tile overlap used by ``cube.unmix.deq`` when none is given: measured by recipes/deq_seams.py
#: (max |tiled - whole| on Jasper Ridge with a trained model, blended tiles; see docs/deq.md).
DEFAULT_HALO = 16
#: The options of :meth:`DEQUnmix.from_endmembers` beyond its named ones (kept for the measured
#: evidence and for model files; each has a row in docs/deq.md or is listed there as unmeasured)
ADVANCED = ("cnn_layers", "use_cnn", "y_features", "y_linear", "y_subspace", "metric", "step")


@register_model
class DEQUnmix(SolveCounter, UnmixModel):
    """Deep-equilibrium unmixing network (spatial with ``kernel_size=3``: tiles need a halo and blending).

    Parameters
    ----------
    n_bands, n_endmembers : int
    endmember_names : list of str, optional
    wavelengths : list of float, optional
        nm, one per band.
    hidden, cnn_layers : int
        Hidden channels and number of convolutions of the correction network ``C_theta``
        (:class:`~xr_unmix.models.deq_parts.CorrectionNet`).
    kernel_size : int
        Their (odd) size: 3 (the receptive field grows by ``cnn_layers`` px per iteration) or 1 (a
        pixel-wise operator: no halo, no seams).
    use_cnn : bool
        ``False`` drops ``C_theta``: the operator is the analytic step (the ablation).
    y_features : int
        If > 0, ``C_theta`` also sees a learned 1x1 projection of the spectra (``bands -> y_features``).
    y_linear : bool
        A learned ``R x bands`` shift ``V`` (zero at the start) of the data term's target: the gradient
        becomes ``M^T M (A - V Y) - M^T Y`` (for labels that are not least-squares abundances).
    y_subspace : int
        With ``y_linear``: ``V = Vc @ basis`` on the whitened top-``y_subspace`` singular directions of
        the training spectra (:meth:`set_spectral_subspace`); ``0``: a full ``V``.
    projection : {"simplex", "scaled"}
        Onto the probability simplex (ANC + ASC at every iteration), or the scaled mixing model
        ``y = s M a``: the state is ``z = s a >= 0`` and the abundances ``z / sum(z)``
        (:func:`~xr_unmix.models.deq_parts.abundances_from_state`).
    precondition : float
        ``0``: projected gradient (``eta = step / ||M||_2^2``). ``delta > 0``: a damped, constrained
        Newton step (:func:`~xr_unmix.models.deq_parts.step_matrix`): fast, well-conditioned solves; at
        pixels with an abundance at 0 the untrained fixed point can differ from FCLS.
    metric : bool
        A learned symmetric ``R x R`` matrix ``Lambda`` (zero at the start) added to ``M^T M`` (a learned
        Tikhonov term; not kept positive definite: solves that stop converging warn).
    step : float
        ``eta ||M||_2^2`` (1: the classical ``1/L`` step).
    learn_endmembers : bool
        Train the endmembers (kept >= 0) or keep them fixed.
    halo : int
        Tile overlap for ``cube.unmix.deq`` (see :data:`DEFAULT_HALO`).
    solver : SolverConfig, optional
        Forward / backward solve settings (:class:`~xr_unmix.models.deq_parts.SolverConfig`); its
        fields are also accepted one by one (``max_iter=``, ``tol=``, ...: how model files store them).
    """

    def __init__(
        self,
        n_bands: int,
        n_endmembers: int,
        endmember_names: list[str] | None = None,
        wavelengths: list[float] | None = None,
        *,
        hidden: int = 16,
        cnn_layers: int = 3,
        kernel_size: int = 3,
        use_cnn: bool = True,
        y_features: int = 0,
        y_linear: bool = False,
        y_subspace: int = 0,
        precondition: float = 0.0,
        projection: str = "simplex",
        metric: bool = False,
        step: float = 1.0,
        learn_endmembers: bool = True,
        halo: int = DEFAULT_HALO,
        solver: SolverConfig | None = None,
        **solver_options: Any,
    ) -> None:
        super().__init__(n_bands, n_endmembers, endmember_names, wavelengths)
        unknown = sorted(set(solver_options) - {f.name for f in dataclasses.fields(SolverConfig)})
        if unknown:
            raise TypeError(f"DEQUnmix got unexpected options {unknown}")
        self.solver = SolverConfig.from_options({**(solver or SolverConfig()).as_config(),
                                                 **solver_options})
        if not step > 0:
            raise ValueError(f"step must be > 0, got {step}")
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be 'simplex' or 'scaled', got {projection!r}")
        if not precondition >= 0:
            raise ValueError(f"precondition must be >= 0, got {precondition}")
        self.config = {
            "hidden": int(hidden), "cnn_layers": int(cnn_layers), "kernel_size": int(kernel_size),
            "use_cnn": bool(use_cnn), "y_features": int(y_features), "y_linear": bool(y_linear),
            "y_subspace": int(y_subspace), "precondition": float(precondition),
            "projection": str(projection), "metric": bool(metric), "step": float(step),
            **self.solver.as_config(), "learn_endmembers": bool(learn_endmembers), "halo": int(halo),
        }
        self.E = nn.Parameter(torch.zeros(self.n_bands, self.n_endmembers),
                              requires_grad=bool(learn_endmembers))
        self.cnn = (CorrectionNet(self.n_endmembers, int(hidden), int(cnn_layers), int(kernel_size),
                         extra=int(y_features)) if use_cnn else None)
        # learned linear shift of the data term's target, zero at the start (see ``y_linear``)
        k = int(y_subspace)
        if k < 0 or k > self.n_bands:
            raise ValueError(f"y_subspace must be in [0, n_bands], got {y_subspace}")
        if k:  # whitened k-dim basis of the training spectra (set by fit)
            self.register_buffer("V_basis", torch.eye(k, self.n_bands))
        else:
            self.V_basis = None
        if y_linear and k:  # V = Vc @ basis: coefficients on the whitened basis
            self.V = None
            self.Vc = nn.Parameter(torch.zeros(self.n_endmembers, k))
        else:
            self.V = (nn.Parameter(torch.zeros(self.n_endmembers, self.n_bands)) if y_linear else None)
            self.Vc = None
        # learned R x R metric of the data term (zero at the start: see ``metric``)
        self.Lam = nn.Parameter(torch.zeros(self.n_endmembers, self.n_endmembers)) if metric else None
        # the CNN's learned spectral features: from the whitened coordinates when y_subspace is set
        self.y_proj = (nn.Conv2d(k or self.n_bands, int(y_features), 1)
                       if use_cnn and y_features > 0 else None)
        self.backward_stats = BackwardStats()
        self.reset_solve_stats()

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_endmembers(cls, E: Any, *, seed: int | None = None, hidden: int = 16,
                        kernel_size: int = 3, precondition: float = 0.0, projection: str = "simplex",
                        learn_endmembers: bool = True, halo: int = DEFAULT_HALO,
                        solver: SolverConfig | None = None, **advanced: Any) -> DEQUnmix:
        """Build an untrained model (= projected gradient descent on the data term) around ``E``.

        Parameters
        ----------
        E : DataArray (band, endmember) or array (bands, R)
            Endmember spectra, reflectance; negative values are clipped to 0. Names and wavelengths
            are taken from a DataArray's ``endmember`` and ``wavelength`` coordinates.
        seed : int, optional
            Seeds the CNN's (non-zero) hidden-layer initialisation.
        hidden, kernel_size, precondition, projection, learn_endmembers, halo
            See :class:`DEQUnmix`.
        solver : SolverConfig, optional
            Solve settings (``SolverConfig(max_iter=..., tol=...)``; its fields are accepted here one
            by one too).
        **advanced
            The other constructor options (:data:`ADVANCED`: ``cnn_layers``, ``use_cnn``,
            ``y_features``, ``y_linear``, ``y_subspace``, ``metric``, ``step``) and solver fields.
        """
        kwargs = {"hidden": hidden, "kernel_size": kernel_size, "precondition": precondition,
                  "projection": projection, "learn_endmembers": learn_endmembers, "halo": halo,
                  "solver": solver, **advanced}
        from .._cube import as_endmembers

        Eda = as_endmembers(E)
        names = [str(n) for n in Eda.endmember.values]
        wl = None
        if "wavelength" in Eda.coords and Eda.coords["wavelength"].dims == ("band",):
            wl = [float(w) for w in Eda.coords["wavelength"].values]
        values = np.clip(np.asarray(Eda.values, dtype=np.float64), 0, None)
        if not (values.sum(0) > 0).all():
            raise ValueError("an endmember is all zeros (after clipping negatives)")
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                model = cls(values.shape[0], values.shape[1], names, wl, **kwargs)
        else:
            model = cls(values.shape[0], values.shape[1], names, wl, **kwargs)
        with torch.no_grad():
            model.E.copy_(torch.as_tensor(values, dtype=model.E.dtype))
        return model

    @classmethod
    def _from_config(cls, config: dict[str, Any]) -> DEQUnmix:
        c = dict(config)
        base = {k: c.pop(k) for k in ("n_bands", "n_endmembers", "endmember_names", "wavelengths")}
        return cls(**base, **c)

    # -- the operator ---------------------------------------------------------------------------------
    @property
    def tile_spec(self) -> TileSpec:
        """Spatial CNN (``kernel_size`` 3): tiles overlap by the configured ``halo`` and are blended,
        the receptive field growing with every iteration. Pixel-wise operator (``kernel_size=1`` or no
        CNN): no halo, no blending (each pixel's fixed point is its own; tiles agree with the whole
        scene to the solve's tolerance)."""
        c = self.config
        if not c["use_cnn"] or c["kernel_size"] == 1:
            return TileSpec()
        return TileSpec.spatial(int(c["halo"]), blend=True)

    def endmember_matrix(self) -> torch.Tensor:
        """``(bands, R)`` endmembers, clipped at 0."""
        return self.E.clamp_min(0)

    def gram(self, E: torch.Tensor | None = None) -> torch.Tensor:
        """The data term's ``(R, R)`` matrix: ``E^T E``, plus the learned symmetric ``Lambda`` of
        ``metric``."""
        E = self.endmember_matrix() if E is None else E
        G = E.T @ E
        if self.Lam is not None:
            G = G + 0.5 * (self.Lam + self.Lam.T)
        return G

    def step_size(self, E: torch.Tensor | None = None) -> torch.Tensor:
        """``eta = step / ||E^T E (+ Lambda)||_2`` (no gradient), 0-d."""
        return step_size(self.gram(self.endmember_matrix() if E is None else E), self.config["step"])

    def operator(self, A: torch.Tensor, Y: torch.Tensor, E: torch.Tensor | None = None,
                 eta: torch.Tensor | None = None) -> torch.Tensor:
        """One application ``P(A - eta * G_theta(A; Y, E))`` to ``A`` (B, R, H, W), ``Y`` (B, bands, H, W)."""
        E = self.endmember_matrix() if E is None else E
        return self._map(Y, E, eta)(A)

    def _update(self, A: torch.Tensor, grad: torch.Tensor, eta: torch.Tensor,
                feats: torch.Tensor | None) -> torch.Tensor:
        upd = eta * grad if eta.ndim == 0 else torch.einsum("rs,nshw->nrhw", eta, grad)
        if self.cnn is not None:
            x = [A, upd] if feats is None else [A, upd, feats]
            upd = upd + self.cnn(torch.cat(x, dim=1))
        return project(A - upd, self.config["projection"])

    def abundances_from_state(self, Z: torch.Tensor) -> torch.Tensor:
        """Abundances from a fixed-point state ``(B, R, ...)`` (see
        :func:`~xr_unmix.models.deq_parts.abundances_from_state`)."""
        return abundances_from_state(Z, self.config["projection"])

    def target_shift(self) -> torch.Tensor | None:
        """The learned ``(R, bands)`` matrix ``V`` of ``y_linear`` (``None`` without it)."""
        if self.Vc is not None:
            return self.Vc @ self.V_basis
        return self.V

    def set_spectral_subspace(self, spectra: Any) -> None:
        """Set the basis of ``y_subspace`` to :func:`~xr_unmix.models.deq_parts.whitened_basis` of
        ``spectra`` ``(n, bands)``; :meth:`fit` does it on its training spectra while untrained."""
        if self.V_basis is None:
            raise ValueError("set_spectral_subspace needs y_subspace > 0")
        with torch.no_grad():
            basis = whitened_basis(spectra, self.n_bands, self.V_basis.shape[0])
            self.V_basis.copy_(basis.to(self.V_basis.dtype))

    def step_matrix(self, E: torch.Tensor | None = None) -> torch.Tensor:
        """The ``(R, R)`` step matrix: ``eta I``, or the preconditioner of ``precondition`` (see
        :func:`~xr_unmix.models.deq_parts.step_matrix`), differentiable in ``E``."""
        c = self.config
        return step_matrix(self.gram(self.endmember_matrix() if E is None else E), step=c["step"],
                           precondition=c["precondition"], scaled=c["projection"] == "scaled")

    def _map(self, Y: torch.Tensor, E: torch.Tensor, eta: torch.Tensor | None = None) -> Any:
        if eta is None:  # a scalar step, or the (R, R) preconditioned one
            eta = self.step_matrix(E) if self.config["precondition"] > 0 else self.step_size(E)
        EtE = self.gram(E)
        EtY = torch.einsum("br,nbhw->nrhw", E, Y)
        V = self.target_shift()
        if V is not None:
            EtY = EtY + torch.einsum("rs,nshw->nrhw", EtE, torch.einsum("rb,nbhw->nrhw", V, Y))
        feats = None
        if self.y_proj is not None:
            Yf = Y if self.V_basis is None else torch.einsum("kb,nbhw->nkhw", self.V_basis, Y)
            feats = self.y_proj(Yf)

        def f(A: torch.Tensor) -> torch.Tensor:
            return self._update(A, torch.einsum("rs,nshw->nrhw", EtE, A) - EtY, eta, feats)

        return f

    def init_abundances(self, Y: torch.Tensor) -> torch.Tensor:
        """FCLS abundances ``(B, R, H, W)`` for ``Y`` ``(B, bands, H, W)`` with the current endmembers."""
        B, b, H, W = Y.shape
        with torch.no_grad():
            E = self.endmember_matrix().detach()
            flat = Y.detach().permute(1, 0, 2, 3).reshape(b, B * H * W)
            A = _fcls(flat, E, max_iter=self.solver.fcls_iter, tol=1e-6, warn=False,
                      dtype=E.dtype, device=E.device)
        return A.reshape(self.n_endmembers, B, H, W).permute(1, 0, 2, 3).contiguous()

    def forward(self, Y: torch.Tensor, A0: torch.Tensor | None = None, *,
                max_iter: int | None = None, tol: float | None = None,
                solver: str = "anderson", warn: bool = True) -> torch.Tensor:
        """Abundances at equilibrium.

        Parameters
        ----------
        Y : Tensor (B, bands, H, W), or (n_pixels, bands) (treated as n 1x1 images)
            Finite reflectance.
        A0 : Tensor, same layout with R channels, optional
            Start of the solve (default FCLS); a state of :meth:`equilibrium` (for ``projection="scaled"``
            the scaled abundances ``z``).
        max_iter, tol : optional
            Override the configured forward-solve settings.
        solver : {"anderson", "plain"}
        warn : bool
            Emit a :class:`~xr_unmix.errors.ConvergenceWarning` when the solve stops above ``tol``.

        Returns
        -------
        Tensor (B, R, H, W) or (n_pixels, R): non-negative, summing to one over R. ``self.last_info``
        holds the solve's :class:`~xr_unmix.solvers.fixed_point.FixedPointInfo`.
        """
        Z = self.equilibrium(Y, A0, max_iter=max_iter, tol=tol, solver=solver, warn=warn)
        return self.abundances_from_state(Z)

    def equilibrium(self, Y: torch.Tensor, A0: torch.Tensor | None = None, *,
                    max_iter: int | None = None, tol: float | None = None,
                    solver: str = "anderson", warn: bool = True) -> torch.Tensor:
        """The fixed point of the operator (the abundances for ``projection="simplex"``, the scaled
        abundances ``z = s a`` for ``"scaled"``); arguments and layout as :meth:`forward`."""
        flat = Y.ndim == 2
        if flat:
            Y = Y[:, :, None, None]
            if A0 is not None:
                A0 = A0[:, :, None, None]
        if Y.ndim != 4:
            raise ValueError(f"Y must be (B, bands, H, W) or (n_pixels, bands); got {tuple(Y.shape)}")
        self.check_bands(Y.shape[1])
        E = self.endmember_matrix()
        if A0 is None:
            A0 = self.init_abundances(Y)
        sc = self.solver
        A, info = deq_fixed_point(
            self._map(Y, E), A0, solver=solver,  # type: ignore[arg-type]
            solver_kwargs=sc.forward_kwargs(max_iter, tol, solver), backward=sc.backward,
            b_kwargs={"max_iter": sc.b_max_iter, "tol": sc.b_tol}, backward_stats=self.backward_stats,
        )
        self.last_info = info
        self._record(info, warn and sc.backward != "unrolled")
        return A[:, :, 0, 0] if flat else A

    def unmix_image(self, Y: torch.Tensor) -> torch.Tensor:
        """Abundances ``(R, H, W)`` of one finite image ``(bands, H, W)``."""
        if Y.ndim != 3:
            raise ValueError(f"Y must be (bands, H, W); got {tuple(Y.shape)}")
        return self(Y[None])[0]

    # -- contraction diagnostics (xr_unmix.models.deq_contraction) ------------------------------------
    jacobian_penalty = deq_contraction.jacobian_penalty
    spectral_radius = deq_contraction.spectral_radius

    def _record(self, info: FixedPointInfo, warn: bool) -> None:
        self.record_solve({"converged": bool(info.all_converged), "residual": float(info.max_residual),
                           "iterations": int(info.n_iter), "tol": float(info.tol)},
                          warn=warn and not torch.is_grad_enabled())

    # -- training (xr_unmix.models.deq_training, on the shared loop of xr_unmix.models.training) ------
    fit_scene = deq_training.fit_scene
    fit = deq_training.fit

    def _project_endmembers(self) -> None:
        with torch.no_grad():
            self.E.clamp_(min=0)
