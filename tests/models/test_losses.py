"""The composite loss and the generic training loop (xr_unmix.models.losses, xr_unmix.models._train)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xr_unmix.models import losses
from xr_unmix.models._train import check_pairs, fit_supervised


def _rows(seed: int = 0, n: int = 8, r: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, r, generator=g, dtype=torch.float64)
    b = torch.rand(n, r, generator=g, dtype=torch.float64)
    return a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)


def test_mse_is_sum_over_endmembers_mean_over_pixels() -> None:
    a, b = _rows()
    expected = float(((a - b) ** 2).sum(1).mean())
    assert float(losses.mse(a, b)) == pytest.approx(expected, rel=1e-12)
    assert float(losses.mse(a, b)) == pytest.approx(a.shape[1] * float(torch.nn.functional.mse_loss(a, b)))


def test_angle_distance_known_values() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0]], dtype=torch.float64)
    # pi/2 and 0 -> mean pi/4 (the second clamped to 1 - eps)
    assert float(losses.angle_distance(a, b)) == pytest.approx(math.pi / 4, abs=1e-3)
    assert float(losses.spectral_angle_loss(a, b)) == float(losses.angle_distance(a, b))


def test_symmetric_kl_matches_definition_and_is_safe_at_zeros() -> None:
    a, b = _rows(1)
    kl = (a * (a / b).log()).sum(1) + (b * (b / a).log()).sum(1)
    assert float(losses.symmetric_kl(a, b)) == pytest.approx(float(kl.mean()), rel=1e-6)
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], requires_grad=True)
    q = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    val = losses.symmetric_kl(p, q)
    val.backward()
    assert torch.isfinite(val) and val > 0
    assert torch.isfinite(p.grad).all()
    assert float(losses.symmetric_kl(q, q)) == 0.0


def test_composite_loss_weights_and_finite_grad_at_perfect_fit() -> None:
    a, b = _rows(2)
    al = (1.0, 0.3, 0.2)
    expected = losses.mse(a, b) + 0.3 * losses.angle_distance(a, b) + 0.2 * losses.symmetric_kl(a, b)
    assert float(losses.composite_loss(a, b, al)) == pytest.approx(float(expected), rel=1e-12)
    assert float(losses.CompositeLoss((1, 0, 0))(a, b)) == pytest.approx(float(losses.mse(a, b)))
    x = b.clone().requires_grad_(True)  # prediction == target: arccos'(1) would be infinite
    losses.composite_loss(x, b, losses.PAPER_ALPHAS).backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="alphas"):
        losses.composite_loss(a, b, (1.0, -1.0, 0.0))
    with pytest.raises(ValueError, match="shapes differ"):
        losses.mse(a, b[:, :2])


def test_check_pairs_errors() -> None:
    Y = np.random.default_rng(0).random((10, 5))
    A = np.full((10, 3), 1 / 3)
    Yt, At = check_pairs(Y, A, n_bands=5, n_endmembers=3)
    assert Yt.dtype == torch.float32 and Yt.shape == (10, 5) and At.shape == (10, 3)
    with pytest.raises(ValueError, match="transposed"):
        check_pairs(Y.T, A, n_bands=5, n_endmembers=3)
    with pytest.raises(ValueError, match="3 endmembers"):
        check_pairs(Y, A[:, :2], n_bands=5, n_endmembers=3)
    with pytest.raises(ValueError, match="10 spectra but 9"):
        check_pairs(Y, A[:9], n_bands=5, n_endmembers=3)
    with pytest.raises(ValueError, match="sum to one"):
        check_pairs(Y, A * 1.1, n_bands=5, n_endmembers=3)
    bad = A.copy()
    bad[0] = [1.2, -0.2, 0.0]
    with pytest.raises(ValueError, match="non-negative"):
        check_pairs(Y, bad, n_bands=5, n_endmembers=3)
    Yn = Y.copy()
    Yn[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        check_pairs(Yn, A, n_bands=5, n_endmembers=3)


def test_fit_supervised_learns_reproducibly_and_calls_back() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 3, generator=g)
    T = X @ torch.tensor([[1.0], [-2.0], [0.5]])

    def run(seed: int) -> tuple[torch.nn.Module, dict]:
        torch.manual_seed(123)
        lin = torch.nn.Linear(3, 1)
        calls: list[int] = []

        def cb(epoch: int, model: torch.nn.Module) -> dict[str, float]:
            calls.append(epoch)
            assert not model.training
            return {"w0": float(model.weight[0, 0])}

        h = fit_supervised(lin, X, T, epochs=30, batch_size=16, lr=0.05, seed=seed, callback=cb,
                           validation=(X[:20], T[:20]), progress=False)
        assert calls == list(range(1, 31))
        return lin, h

    m1, h1 = run(5)
    m2, h2 = run(5)
    m3, _ = run(6)
    assert h1["loss"][-1] < 0.05 * h1["loss"][0]
    assert len(h1["loss"]) == len(h1["val_loss"]) == len(h1["w0"]) == 30
    assert h1["loss"] == h2["loss"] and torch.equal(m1.weight, m2.weight)
    assert not torch.equal(m1.weight, m3.weight)
    assert h1["time_s"] > 0 and h1["n_samples"] == 200
    # plain callable needs params
    w = torch.zeros(3, 1, requires_grad=True)
    h = fit_supervised(lambda x: x @ w, X, T, epochs=5, lr=0.1, params=[w], seed=0, progress=False)
    assert h["loss"][-1] < h["loss"][0]
    with pytest.raises(ValueError, match="params"):
        fit_supervised(lambda x: x @ w, X, T, epochs=1)
