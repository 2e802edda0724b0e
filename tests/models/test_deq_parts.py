"""Each part of DEQ-Unmix alone: data step, projection, correction network, solver configuration."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch

from xr_unmix.models.deq import DEQUnmix
from xr_unmix.models.deq_parts import (
    CorrectionNet,
    SolverConfig,
    project,
    step_matrix,
    step_size,
)


def _gram(seed: int = 0, R: int = 4) -> torch.Tensor:
    E = torch.as_tensor(np.random.default_rng(seed).uniform(0.05, 1, (30, R)))
    return E.T @ E


def test_projected_gradient_step_is_eta_identity() -> None:
    G = _gram()
    K = step_matrix(G, step=1.0)
    eta = step_size(G, 1.0)
    torch.testing.assert_close(K, eta * torch.eye(4, dtype=G.dtype))
    assert float(eta) == pytest.approx(1 / float(torch.linalg.matrix_norm(G, ord=2)))


def test_preconditioned_step_keeps_the_sum_and_contracts_faster() -> None:
    G = _gram()
    K = step_matrix(G, step=1.0, precondition=1e-3)
    torch.testing.assert_close(K @ torch.ones(4, dtype=G.dtype), torch.zeros(4, dtype=G.dtype),
                               atol=1e-10, rtol=0)  # K 1 = 0: sum-to-one kept before projection
    I = torch.eye(4, dtype=G.dtype)
    Z = torch.linalg.qr((I - 0.25)[:, :3])[0]  # sum-to-zero subspace
    rho_pgd = float(torch.linalg.eigvals(Z.T @ (I - step_matrix(G) @ G) @ Z).abs().max())
    rho_pre = float(torch.linalg.eigvals(Z.T @ (I - K @ G) @ Z).abs().max())
    assert rho_pre < 0.1 < rho_pgd  # the linear part contracts far faster than PGD


def test_projection_onto_the_simplex() -> None:
    Z = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(0))
    S = project(Z)
    assert float(S.min()) >= 0 and torch.allclose(S.sum(1), torch.ones(2, 3, 5))
    torch.testing.assert_close(project(S), S)  # a projection: idempotent


def test_correction_net_starts_at_zero_and_kernel_1_is_pixelwise() -> None:
    torch.manual_seed(0)
    net = CorrectionNet(3, 8, 3, kernel_size=1)
    x = torch.randn(1, 6, 7, 9)
    assert torch.equal(net(x), torch.zeros(1, 3, 7, 9))
    with torch.no_grad():
        net.convs[-1].weight.normal_()
    y = net(x)
    x2 = x.clone()
    x2[..., 0, 0] += 5.0  # one pixel changed: only that output pixel moves
    d = (net(x2) - y).abs().sum(1)[0]
    assert d[0, 0] > 0 and float(d.flatten()[1:].max()) == 0
    with pytest.raises(ValueError, match="odd"):
        CorrectionNet(3, 8, 3, kernel_size=2)


def test_solver_config_is_small_checked_and_round_trips() -> None:
    c = SolverConfig(max_iter=50, tol=1e-5)
    assert SolverConfig.from_options(c.as_config()) == c
    assert c.forward_kwargs() == {"max_iter": 50, "tol": 1e-5, "m": 5, "lam": 1e-4, "beta": 1.0}
    assert c.forward_kwargs(3, solver="plain") == {"max_iter": 3, "tol": 1e-5}
    with pytest.raises(ValueError, match=r"max_iter and b_max_iter must be in \[1, 10000\]"):
        SolverConfig(max_iter=0)
    with pytest.raises(ValueError, match="backward must be"):
        SolverConfig(backward="adjoint")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.tol = 1.0  # type: ignore[misc]


def test_model_takes_a_solver_config_and_its_fields(scene) -> None:
    _, E, _ = scene
    a = DEQUnmix.from_endmembers(E, seed=0, solver=SolverConfig(max_iter=7, tol=1e-3))
    b = DEQUnmix.from_endmembers(E, seed=0, max_iter=7, tol=1e-3)
    assert a.solver == b.solver and a.config == b.config and a.config["max_iter"] == 7
    with pytest.raises(TypeError, match="unexpected options"):
        DEQUnmix.from_endmembers(E, max_iters=7)
    named = [p for p in inspect.signature(DEQUnmix.from_endmembers).parameters
             if p not in ("E", "solver_options")]
    assert len(named) <= 10, named  # what a user needs to know; solver fields go through ``solver``
