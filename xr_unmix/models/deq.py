"""DEQ-Unmix: abundances as the equilibrium of a learned projected-gradient operator.

The abundances ``A`` of an image are the fixed point of::

    A = P( A - eta * G_theta(A; Y, M) ),      G_theta = M^T (M A - Y) + C_theta([A, eta M^T (M A - Y)]) / eta

where ``M`` (bands x R) are the endmembers, ``P`` the exact Euclidean projection of every pixel onto the
probability simplex (ANC + ASC), ``eta = 1 / ||M||_2^2`` and ``C_theta`` a small spectral-spatial CNN
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

from ..errors import ModelFileError
from ..solvers.fixed_point import BackwardStats, FixedPointInfo, deq_fixed_point
from ..solvers.sunsal import fcls as _fcls
from ..tiling import TileSpec
from . import deq_contraction, deq_training
from .base import SolveCounter, UnmixModel
from .deq_parts import (
    MAX_ITER,  # noqa: F401  (importable from here)
    CorrectionNet,
    SolverConfig,
    project,
    step_matrix,
    step_size,
)
from .registry import register_model

#: Tile overlap used by ``cube.unmix.deq`` when none is given: measured by recipes/deq_seams.py
#: (max |tiled - whole| on Jasper Ridge with a trained model, blended tiles; see docs/deq.md).
DEFAULT_HALO = 16
#: Layers of the correction network (fixed: the ``cnn_layers`` option was removed, see :data:`REMOVED`)
CNN_LAYERS = 3
#: Options of release 0.1 that were removed, with their only accepted value and why: a model file that
#: used another value is refused (:class:`~xr_unmix.errors.ModelFileError`), one with that value loads.
REMOVED: dict[str, tuple[Any, str]] = {
    "y_features": (0, ("a learned spectral input of the CNN that no measurement of the evaluation "
                       "protocol supported")),
    "y_linear": (False, ("a learned shift of the data term's target that no measurement of the "
                         "evaluation protocol supported")),
    "y_subspace": (0, "the whitened-subspace form of y_linear, measured worse than without it"),
    "metric": (False, ("a learned Tikhonov metric that made solves stop converging and no "
                       "measurement supported")),
    "projection": ("simplex", ("the scaled projection left ConvergenceWarnings on 3 of 4 TUNE scenes "
                               "of the evaluation protocol and lost to the simplex projection")),
    "step": (1.0, "a step-size factor that was never measured on the evaluation protocol"),
    "cnn_layers": (CNN_LAYERS, "the CNN depth, never measured on the evaluation protocol"),
}


@register_model
class DEQUnmix(SolveCounter, UnmixModel):
    """Deep-equilibrium unmixing network (spatial with ``kernel_size=3``: tiles need a halo and blending).

    Parameters
    ----------
    n_bands, n_endmembers : int
    endmember_names : list of str, optional
    wavelengths : list of float, optional
        nm, one per band.
    hidden : int
        Hidden channels of the correction network ``C_theta``
        (:class:`~xr_unmix.models.deq_parts.CorrectionNet`, 3 convolutions).
    kernel_size : int
        Their (odd) size: 3 (the receptive field grows by 3 px per iteration) or 1 (a pixel-wise
        operator: no halo, no seams).
    use_cnn : bool
        ``False`` drops ``C_theta``: the operator is the analytic step (the ablation).
    precondition : float
        ``0``: projected gradient (``eta = 1 / ||M||_2^2``). ``delta > 0``: a damped, constrained
        Newton step (:func:`~xr_unmix.models.deq_parts.step_matrix`): fast, well-conditioned solves; at
        pixels with an abundance at 0 the untrained fixed point can differ from FCLS.
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
        kernel_size: int = 3,
        use_cnn: bool = True,
        precondition: float = 0.0,
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
        if not precondition >= 0:
            raise ValueError(f"precondition must be >= 0, got {precondition}")
        self.config = {
            "hidden": int(hidden), "kernel_size": int(kernel_size), "use_cnn": bool(use_cnn),
            "precondition": float(precondition), **self.solver.as_config(),
            "learn_endmembers": bool(learn_endmembers), "halo": int(halo),
        }
        self.E = nn.Parameter(torch.zeros(self.n_bands, self.n_endmembers),
                              requires_grad=bool(learn_endmembers))
        self.cnn = (CorrectionNet(self.n_endmembers, int(hidden), CNN_LAYERS, int(kernel_size))
                    if use_cnn else None)
        self.backward_stats = BackwardStats()
        self.reset_solve_stats()

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_endmembers(cls, E: Any, *, seed: int | None = None, hidden: int = 16,
                        kernel_size: int = 3, use_cnn: bool = True, precondition: float = 0.0,
                        learn_endmembers: bool = True, halo: int = DEFAULT_HALO,
                        solver: SolverConfig | None = None, **solver_options: Any) -> DEQUnmix:
        """Build an untrained model (= projected gradient descent on the data term) around ``E``.

        Parameters
        ----------
        E : DataArray (band, endmember) or array (bands, R)
            Endmember spectra, reflectance; negative values are clipped to 0. Names and wavelengths
            are taken from a DataArray's ``endmember`` and ``wavelength`` coordinates.
        seed : int, optional
            Seeds the CNN's (non-zero) hidden-layer initialisation.
        hidden, kernel_size, use_cnn, precondition, learn_endmembers, halo
            See :class:`DEQUnmix`.
        solver : SolverConfig, optional
            Solve settings (``SolverConfig(max_iter=..., tol=...)``).
        **solver_options
            :class:`~xr_unmix.models.deq_parts.SolverConfig` fields one by one (``max_iter=...``).
        """
        kwargs = {"hidden": hidden, "kernel_size": kernel_size, "use_cnn": use_cnn,
                  "precondition": precondition, "learn_endmembers": learn_endmembers, "halo": halo,
                  "solver": solver, **solver_options}
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
        for key, (default, why) in REMOVED.items():  # options of release 0.1
            if key in c and c.pop(key) != default:
                raise ModelFileError(f"this DEQUnmix model file uses {key}={config[key]!r}, an option "
                                     f"removed since release 0.1 ({why}); retrain the model with this "
                                     f"version (only {key}={default!r} files still load)")
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
        """The data term's ``(R, R)`` matrix ``E^T E``."""
        E = self.endmember_matrix() if E is None else E
        return E.T @ E

    def step_size(self, E: torch.Tensor | None = None) -> torch.Tensor:
        """``eta = 1 / ||E^T E||_2`` (no gradient), 0-d."""
        return step_size(self.gram(self.endmember_matrix() if E is None else E), 1.0)

    def operator(self, A: torch.Tensor, Y: torch.Tensor, E: torch.Tensor | None = None,
                 eta: torch.Tensor | None = None) -> torch.Tensor:
        """One application ``P(A - eta * G_theta(A; Y, E))`` to ``A`` (B, R, H, W), ``Y`` (B, bands, H, W)."""
        E = self.endmember_matrix() if E is None else E
        return self._map(Y, E, eta)(A)

    def _update(self, A: torch.Tensor, grad: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        upd = eta * grad if eta.ndim == 0 else torch.einsum("rs,nshw->nrhw", eta, grad)
        if self.cnn is not None:
            upd = upd + self.cnn(torch.cat([A, upd], dim=1))
        return project(A - upd)

    def step_matrix(self, E: torch.Tensor | None = None) -> torch.Tensor:
        """The ``(R, R)`` step matrix: ``eta I``, or the preconditioner of ``precondition`` (see
        :func:`~xr_unmix.models.deq_parts.step_matrix`), differentiable in ``E``."""
        return step_matrix(self.gram(self.endmember_matrix() if E is None else E),
                           precondition=self.config["precondition"])

    def _map(self, Y: torch.Tensor, E: torch.Tensor, eta: torch.Tensor | None = None) -> Any:
        if eta is None:  # a scalar step, or the (R, R) preconditioned one
            eta = self.step_matrix(E) if self.config["precondition"] > 0 else self.step_size(E)
        EtE = self.gram(E)
        EtY = torch.einsum("br,nbhw->nrhw", E, Y)

        def f(A: torch.Tensor) -> torch.Tensor:
            return self._update(A, torch.einsum("rs,nshw->nrhw", EtE, A) - EtY, eta)

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
            Start of the solve (default FCLS).
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
        return self.equilibrium(Y, A0, max_iter=max_iter, tol=tol, solver=solver, warn=warn)

    def equilibrium(self, Y: torch.Tensor, A0: torch.Tensor | None = None, *,
                    max_iter: int | None = None, tol: float | None = None,
                    solver: str = "anderson", warn: bool = True) -> torch.Tensor:
        """The fixed point of the operator (the abundances; :meth:`forward` returns the same); arguments
        and layout as :meth:`forward`."""
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
