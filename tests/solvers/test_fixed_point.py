"""Tests of xr_unmix.solvers.fixed_point: forward solvers and implicit gradients (no unmixing)."""

from __future__ import annotations

import pytest
import torch

from xr_unmix.solvers.fixed_point import (
    BackwardStats,
    anderson,
    deq_fixed_point,
    fixed_point_iter,
)


def _problem(seed: int = 0, n: int = 12, batch: int = 3, contraction: float = 0.9):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=g, dtype=torch.float64)
    W = W * (contraction / torch.linalg.matrix_norm(W, ord=2))
    U = torch.randn(n, n, generator=g, dtype=torch.float64) * 0.5
    x = torch.randn(batch, n, generator=g, dtype=torch.float64)
    return W.requires_grad_(), U.requires_grad_(), x.requires_grad_()


def test_anderson_linear_matches_direct_solve_and_beats_plain() -> None:
    W, U, x = _problem(contraction=0.98)
    with torch.no_grad():
        f = lambda z: z @ W.T + x @ U.T  # noqa: E731
        exact = torch.linalg.solve(torch.eye(12, dtype=W.dtype) - W, (x @ U.T).T).T
        za, ia = anderson(f, torch.zeros_like(x), m=5, lam=1e-8, tol=1e-10, max_iter=200)
        zp, ip = fixed_point_iter(f, torch.zeros_like(x), tol=1e-10, max_iter=200)
    assert ia.all_converged
    assert torch.allclose(za, exact, atol=1e-8)
    assert ia.n_iter < ip.n_iter  # acceleration actually accelerates
    assert ia.residuals.shape == (ia.n_iter, 3)
    trace = ia.trace()
    assert len(trace) == ia.n_iter and trace[-1] <= 1e-10


def test_nonconvergence_is_bounded_and_reported() -> None:
    # f(z) = -2 z + 1 is expansive: plain iteration diverges; both stop at max_iter and report it.
    f = lambda z: -2.0 * z + 1.0  # noqa: E731
    z, info = fixed_point_iter(f, torch.zeros(2, 3), tol=1e-8, max_iter=15)
    assert info.n_iter == 15 and not info.converged.any() and info.max_residual > 1e-8
    # Anderson solves this linear map in two steps (the mixing extrapolates to z = 1/3).
    z, info = anderson(f, torch.zeros(2, 3, dtype=torch.float64), tol=1e-8, max_iter=15, lam=0)
    assert info.all_converged and torch.allclose(z, torch.full_like(z, 1 / 3))


def test_fallback_is_damped_plain_iteration() -> None:
    # max_cond = 1 declares every least-squares step ill-conditioned: Anderson must then reproduce the
    # damped plain iteration exactly, step for step.
    W, U, x = _problem(contraction=0.9)
    with torch.no_grad():
        f = lambda z: torch.tanh(z @ W.T + x @ U.T)  # noqa: E731
        za, ia = anderson(f, torch.zeros_like(x), m=5, tol=1e-9, max_iter=40, max_cond=1.0,
                          beta=0.7, fallback_beta=0.7)
        zp, ip = fixed_point_iter(f, torch.zeros_like(x), beta=0.7, tol=1e-9, max_iter=40)
    assert ia.fallback_steps == 3 * (ia.n_iter - 2)  # every step after the first (a plain one)
    assert ia.n_iter == ip.n_iter
    assert torch.allclose(ia.residuals, ip.residuals, rtol=1e-12, atol=0)
    assert torch.allclose(za, zp)


def test_per_sample_residuals_independent() -> None:
    # sample 1 is already at its fixed point; sample 0 is not
    f = lambda z: 0.5 * z + torch.tensor([[1.0], [0.0]])  # noqa: E731
    _, info = fixed_point_iter(f, torch.tensor([[0.0], [0.0]]), tol=1e-6, max_iter=100)
    assert info.final_residual[1] == 0 and info.residuals[0, 1] == 0
    assert info.residuals[0, 0] > 0.1


@pytest.mark.parametrize("solver", ["anderson", "plain"])
def test_implicit_gradient_matches_unrolled(solver: str) -> None:
    W, U, x = _problem(contraction=0.8)

    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ W.T + x @ U.T)

    target = torch.linspace(-1, 1, 12, dtype=torch.float64)
    stats = BackwardStats()
    z, info = deq_fixed_point(f, torch.zeros_like(x.detach()), solver=solver,
                              solver_kwargs={"tol": 1e-12, "max_iter": 300},
                              b_kwargs={"tol": 1e-12, "max_iter": 300}, backward_stats=stats)
    assert info.all_converged
    ((z - target) ** 2).sum().backward()
    g_imp = torch.cat([W.grad.flatten(), U.grad.flatten(), x.grad.flatten()])
    assert stats.n_calls == 1 and stats.last_residual <= 1e-10
    for p in (W, U, x):
        p.grad = None
    zu, _ = deq_fixed_point(f, torch.zeros_like(x.detach()), backward="unrolled",
                            solver_kwargs={"max_iter": 300})
    ((zu - target) ** 2).sum().backward()
    g_unr = torch.cat([W.grad.flatten(), U.grad.flatten(), x.grad.flatten()])
    cos = torch.nn.functional.cosine_similarity(g_imp, g_unr, dim=0)
    assert cos > 0.99
    assert torch.allclose(g_imp, g_unr, rtol=1e-6, atol=1e-9)
    assert torch.allclose(z, zu, atol=1e-10)


def test_jfb_gradient_is_a_descent_direction_but_differs() -> None:
    W, U, x = _problem(contraction=0.8)
    f = lambda z: torch.tanh(z @ W.T + x @ U.T)  # noqa: E731
    z, _ = deq_fixed_point(f, torch.zeros_like(x.detach()), backward="jfb",
                           solver_kwargs={"tol": 1e-12, "max_iter": 300})
    (z ** 2).sum().backward()
    g_jfb = U.grad.flatten().clone()
    U.grad = None
    z, _ = deq_fixed_point(f, torch.zeros_like(x.detach()), solver_kwargs={"tol": 1e-12, "max_iter": 300},
                           b_kwargs={"tol": 1e-12, "max_iter": 300})
    (z ** 2).sum().backward()
    g_imp = U.grad.flatten()
    cos = float(torch.nn.functional.cosine_similarity(g_jfb, g_imp, dim=0))
    assert 0 < cos < 0.9999


def test_no_graph_in_inference_mode() -> None:
    W, U, x = _problem()
    f = lambda z: torch.tanh(z @ W.T + x @ U.T)  # noqa: E731
    with torch.no_grad():
        z, info = deq_fixed_point(f, torch.zeros(3, 12, dtype=torch.float64))
    assert not z.requires_grad and info.n_iter >= 1


def test_bad_arguments() -> None:
    f = lambda z: z  # noqa: E731
    with pytest.raises(ValueError, match="max_iter"):
        anderson(f, torch.zeros(1, 2), max_iter=0)
    with pytest.raises(ValueError, match="beta"):
        fixed_point_iter(f, torch.zeros(1, 2), beta=0)
    with pytest.raises(ValueError, match="backward"):
        deq_fixed_point(f, torch.zeros(1, 2), backward="magic")  # type: ignore[arg-type]


@pytest.mark.parametrize("max_iter", [1, 7, 300])
def test_inference_returns_f_of_the_solution_without_another_call(max_iter: int) -> None:
    # was: one more application of f after the solve (half of a DEQ tile that converges at once)
    W, U, x = _problem()
    calls = []

    def f(z: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.tanh(z @ W.T + x @ U.T)

    kw = {"tol": 1e-10, "max_iter": max_iter}
    with torch.no_grad():
        z, info = deq_fixed_point(f, torch.zeros(3, 12, dtype=torch.float64), solver_kwargs=kw)
        assert len(calls) == info.n_iter
        z_star, info2 = anderson(f, torch.zeros(3, 12, dtype=torch.float64), **kw)
        expected = f(z_star)
    assert info2.n_iter == info.n_iter
    torch.testing.assert_close(z, expected, rtol=0, atol=0)


def _anderson_reference(fb, z0: torch.Tensor, m: int, lam: float, beta: float, n_iter: int) -> list:
    """Textbook Anderson (type II), one sample at a time (``fb(b)``: sample ``b``'s map), histories kept
    as lists and the Gram matrix recomputed from scratch every step: the iterates ``x_0 .. x_{n_iter-1}``
    of every sample."""
    from xr_unmix.solvers._anderson import mixing_weights

    out = []
    for b in range(z0.shape[0]):
        f = fb(b)
        x, xs, fs, traj = z0[b:b + 1], [], [], []
        for _ in range(n_iter):
            traj.append(x)
            fx = f(x)
            xs, fs = (xs + [x])[-m:], (fs + [fx])[-m:]
            if len(xs) == 1:
                x = (1 - beta) * x + beta * fx
                continue
            G = torch.stack([(fi - xi).flatten() for fi, xi in zip(fs, xs, strict=True)]).double()
            alpha, ok = mixing_weights((G @ G.T)[None], lam, 1e4, 1e10)
            assert bool(ok.all())
            a = alpha[0].to(x.dtype)
            x = beta * sum(ai * fi for ai, fi in zip(a, fs, strict=True)) + (1 - beta) * sum(
                ai * xi for ai, xi in zip(a, xs, strict=True))
        out.append(torch.cat(traj))
    return out


@pytest.mark.parametrize("beta", [1.0, 0.6])
def test_anderson_follows_the_textbook_iteration(beta: float) -> None:
    """The solver's ring buffers (no stored iterates when beta = 1), incremental Gram rows and single
    residual per step give the textbook iterates, on a nonlinear map with a batch of 2."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(6, 6, generator=g, dtype=torch.float64) * 0.3
    c = torch.randn(2, 6, generator=g, dtype=torch.float64)
    f = lambda z: torch.tanh(z @ W.T + c)  # noqa: E731
    seen: list[torch.Tensor] = []

    def rec(z: torch.Tensor) -> torch.Tensor:
        seen.append(z.clone())
        return f(z)

    z0 = torch.zeros(2, 6, dtype=torch.float64)
    z, info, fz = anderson(rec, z0, m=3, lam=1e-8, beta=beta, tol=0.0, max_iter=12, keep_f=True)
    ref = _anderson_reference(lambda b: lambda z: torch.tanh(z @ W.T + c[b:b + 1]), z0, 3, 1e-8, beta, 12)
    got = torch.stack(seen, 1)  # (B, n_iter, 6)
    for b in range(2):
        torch.testing.assert_close(got[b], ref[b], rtol=0, atol=1e-10)
    best = info.residuals.argmin(0)
    torch.testing.assert_close(z, got[torch.arange(2), best], rtol=0, atol=0)
    torch.testing.assert_close(fz, f(z), rtol=0, atol=1e-12)
