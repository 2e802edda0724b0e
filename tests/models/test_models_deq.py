"""Tests of xr_unmix.models.deq.DEQUnmix: operator, solve, gradients, training, persistence, tiling."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import xr_unmix
from xr_unmix.errors import ConvergenceWarning
from xr_unmix.models.base import load_model
from xr_unmix.models.deq import DEQUnmix
from xr_unmix.solvers.sunsal import fcls, project_simplex
from xr_unmix.testing import make_cube, make_endmembers
from xr_unmix.tiling import TileSpec


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scene():
    E = make_endmembers(n_bands=20, n_endmembers=3, seed=1)
    cube, E, truth = make_cube(24, 28, E, snr_db=30, seed=2)
    return cube, E, truth


def _perturb(model: DEQUnmix, scale: float = 0.05, seed: int = 0) -> DEQUnmix:
    """Give the (zero-initialised) last CNN layer small random weights: a 'trained' operator."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.cnn.convs[-1].weight
        w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype) * scale)
    return model


def _shifted_labels(truth, w: float = 0.3) -> np.ndarray:
    """(3, h, w) labels the untrained model does not give: ``w`` parts of a permuted truth, ``1 - w``
    of the truth (still on the simplex)."""
    return truth.values[[1, 2, 0]] * w + truth.values * (1 - w)


def test_untrained_operator_is_projected_gradient_descent(scene) -> None:
    cube, E, _ = scene
    model = DEQUnmix.from_endmembers(E, seed=0)
    Et = torch.as_tensor(E.values, dtype=torch.float32)
    Y = torch.as_tensor(cube.values)[None]
    A = torch.rand(1, 3, 24, 28, generator=torch.Generator().manual_seed(0))
    eta = 1.0 / torch.linalg.matrix_norm(Et.double(), ord=2).float() ** 2
    grad = torch.einsum("rs,nshw->nrhw", Et.T @ Et, A) - torch.einsum("br,nbhw->nrhw", Et, Y)
    pgd = project_simplex(A - eta * grad, dim=1)
    with torch.no_grad():
        got = model.operator(A, Y)
    torch.testing.assert_close(got, pgd, rtol=0, atol=1e-6)
    # ... and its equilibrium is FCLS (the minimiser of the data term on the simplex)
    with torch.no_grad():
        A_deq = model(Y, A0=torch.full_like(A, 1 / 3), max_iter=400, tol=1e-6, warn=False)[0]
    A_fcls = fcls(cube.values.reshape(20, -1), E.values, tol=1e-7, max_iter=5000, warn=False,
                  dtype=torch.float64).reshape(3, 24, 28)
    assert float((A_deq.double() - A_fcls).abs().max()) < 2e-3
    # a perturbed CNN changes the operator (the test above could fail)
    with torch.no_grad():
        assert float((_perturb(model).operator(A, Y) - pgd).abs().max()) > 1e-3


def test_output_on_simplex_and_shapes(scene) -> None:
    cube, E, _ = scene
    model = _perturb(DEQUnmix.from_endmembers(E, seed=0), 0.2)
    with torch.no_grad(), pytest.warns(ConvergenceWarning):  # a random operator: on the simplex anyway
        out = model.unmix_image(torch.as_tensor(cube.values))
        pix = model(torch.as_tensor(cube.values[:, :2, :3].reshape(20, -1).T.copy()), warn=False)
    assert out.shape == (3, 24, 28) and pix.shape == (6, 3)
    assert float(out.min()) >= 0 and torch.allclose(out.sum(0), torch.ones(24, 28), atol=1e-5)
    assert model.tile_spec == TileSpec(halo=model.config["halo"], blend=True, pixelwise=False)
    assert model.config["halo"] > 0


@pytest.mark.parametrize("kw", [{"kernel_size": 1}, {"use_cnn": False}])
def test_pixelwise_operator_is_tiled_without_halo(scene, kw) -> None:
    cube, E, _ = scene
    m = DEQUnmix.from_endmembers(E, seed=0, hidden=4, **kw)
    assert m.tile_spec == TileSpec() and m.halo == 0  # not 16 px blended
    out = cube.chunk({"y": 8, "x": 8}).unmix.deq(m)
    assert out.attrs["halo"] == 0
    # no overlap and no blending: the 8 px chunks are kept (a 16 px halo would merge them)
    assert out.data.chunks[1:] == ((8, 8, 8), (8, 8, 8, 4))
    assert not any("blend" in k or "overlap" in k for k in out.data.dask.layers)
    np.testing.assert_allclose(out.values, cube.unmix.deq(m).values, atol=2e-3)


def test_implicit_gradient_matches_unrolled_backprop() -> None:
    # a small, well-conditioned problem (so that 1500 unrolled plain steps reach the equilibrium)
    rng = np.random.default_rng(0)
    E = rng.uniform(0.1, 1.0, (12, 3))
    A_true = rng.dirichlet(np.ones(3), size=(6, 6)).transpose(2, 0, 1)
    Y = torch.as_tensor(np.einsum("br,ryx->byx", E, A_true) + rng.normal(0, 0.05, (12, 6, 6)))[None]
    target = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def grads(backward: str) -> torch.Tensor:
        m = _perturb(DEQUnmix.from_endmembers(E, seed=0, backward=backward, max_iter=1500, tol=1e-12,
                                              b_max_iter=200, b_tol=1e-12), 0.01).double()
        A0 = m.init_abundances(Y)
        out = m(Y, A0=A0, solver="plain" if backward == "unrolled" else "anderson", warn=False)
        if backward == "implicit":
            assert m.last_info.max_residual < 1e-9
        else:
            assert m.last_info.residuals[-1].max() < 1e-9
        ((out - target) ** 2).sum().backward()
        return torch.cat([p.grad.flatten() for p in m.parameters()])

    g_imp, g_unr = grads("implicit"), grads("unrolled")
    cos = float(torch.nn.functional.cosine_similarity(g_imp, g_unr, dim=0))
    assert cos > 0.99, cos
    g_jfb = grads("jfb")
    assert float(torch.nn.functional.cosine_similarity(g_jfb, g_unr, dim=0)) < cos


def test_nonconvergence_warns_and_is_recorded(scene) -> None:
    cube, E, _ = scene
    model = _perturb(DEQUnmix.from_endmembers(E, seed=0, max_iter=2, tol=1e-12), 0.2)
    model.reset_solve_stats()
    with pytest.warns(ConvergenceWarning, match=r"residual [0-9.e+-]+ > tol"), torch.no_grad():
        model.unmix_image(torch.as_tensor(cube.values))
    s = model.solve_stats
    assert s["n_solves"] == 1 and s["n_unconverged"] == 1 and s["max_residual"] > 1e-12
    assert s["max_iterations"] == 2


def test_save_load_roundtrip_with_refined_endmembers(scene, tmp_path) -> None:
    cube, E, _ = scene
    model = _perturb(DEQUnmix.from_endmembers(E, seed=0, hidden=8, max_iter=200), 0.001)
    with torch.no_grad():
        model.E.mul_(1.1)  # "refined"
    path = model.save(tmp_path / "deq.safetensors")
    back = load_model(path)
    assert isinstance(back, DEQUnmix) and back.config == model.config
    assert back.endmember_names == list(E.endmember.values)
    np.testing.assert_allclose(back.endmembers.values, E.values * 1.1, rtol=1e-6)
    with torch.no_grad():
        Y = torch.as_tensor(cube.values)
        torch.testing.assert_close(back.unmix_image(Y), model.unmix_image(Y))
    # dask workers receive the model by pickling (in memory only; files never use pickle)
    import pickle

    clone = pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        torch.testing.assert_close(clone.unmix_image(Y), model.unmix_image(Y))


def test_fit_scene_unsupervised(scene) -> None:
    cube, E, _ = scene
    Ebad = E.copy(data=np.clip(E.values * 0.8 + 0.05, 0, None))  # wrong endmembers to refine
    m1 = DEQUnmix.from_endmembers(Ebad, seed=0, hidden=8)
    h = m1.fit_scene(cube, epochs=12, seed=0, lr_endmembers=5e-3,
                     progress=False)
    assert len(h["loss"]) == 13 and len(h["residual"]) == 13 and h["whole_scene"]
    assert h["best_loss"] < 0.9 * h["initial_loss"] and h["final_loss"] < 0.9 * h["initial_loss"]
    assert float(m1.E.detach().min()) >= 0 and not m1.training
    m2 = DEQUnmix.from_endmembers(Ebad, seed=0, hidden=8)
    m2.fit_scene(cube, epochs=12, seed=0, lr_endmembers=5e-3, progress=False)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(a, b)  # seeded: reproducible


def test_fit_scene_sampled_tiles_keeps_a_later_epoch(scene) -> None:
    # issue 16: with tiles sampled, the eligibility rule used to block every epoch after the start
    cube, E, _ = scene
    Ebad = E.copy(data=np.clip(E.values * 0.8 + 0.05, 0, None))  # wrong endmembers to refine
    m = DEQUnmix.from_endmembers(Ebad, seed=0, hidden=8)
    lazy = cube.chunk({"y": 8, "x": 8})  # dask-backed: only the sampled windows are read
    h = m.fit_scene(lazy, epochs=8, seed=1, max_pixels=100, tile_size=12,
                    tiles_per_epoch=2, progress=False)
    assert not h["whole_scene"] and h["improved"] and h["best_epoch"] > 0
    assert h["final_loss"] < h["initial_loss"]


def test_fit_supervised_pixels_and_tiles(scene) -> None:
    cube, E, truth = scene
    Y = cube.values.reshape(20, -1).T
    A = _shifted_labels(truth).reshape(3, -1).T  # labels FCLS does not give: training can improve
    m = DEQUnmix.from_endmembers(E, seed=0, hidden=8)
    h = m.fit(Y[:64], A[:64], epochs=4, batch_size=32, lr=1e-2, seed=0, progress=False)
    assert len(h["loss"]) == 5 and len(h["train_loss"]) == 4  # the start, then after every epoch
    assert h["best_loss"] < h["loss"][0] and h["best_epoch"] > 0
    labels = np.full((1, 3, 24, 28), np.nan, dtype=np.float32)
    labels[0, :, ::4, ::4] = truth.values[:, ::4, ::4]
    m2 = DEQUnmix.from_endmembers(E, seed=0, hidden=8)
    h2 = m2.fit(cube.values[None], labels, epochs=4, batch_size=1, seed=0, progress=False)
    assert len(h2["loss"]) == 5 and np.isfinite(h2["loss"]).all()
    with pytest.raises(ValueError, match="sum to one"):
        m.fit(Y[:8], A[:8] * 2, epochs=1, progress=False)


def test_accessor_tiled_matches_whole_and_masks_nan(scene) -> None:
    cube, E, _ = scene
    cube = cube.copy()
    cube[:, 5, 6] = np.nan
    model = _perturb(DEQUnmix.from_endmembers(E, seed=0, max_iter=200, tol=1e-6), 0.001)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # every tile's solve converges
        whole = cube.unmix.deq(model)
        tiled = cube.chunk({"y": 12, "x": 14}).unmix.deq(model, halo=6)
        assert tiled.chunks is not None
        t = tiled.compute()
    assert whole.dims == ("endmember", "y", "x") and whole.attrs["method"] == "deq"
    assert np.isnan(whole.values[:, 5, 6]).all() and np.isnan(t.values).sum() == 3
    diff = float(np.nanmax(np.abs(whole.values - t.values)))
    assert diff < 1e-3, diff
    assert isinstance(xr_unmix.DEQUnmix, type)


def test_bad_arguments(scene) -> None:
    _, E, _ = scene
    with pytest.raises(ValueError, match="backward"):
        DEQUnmix.from_endmembers(E, backward="magic")
    with pytest.raises(ValueError, match="all zeros"):
        DEQUnmix.from_endmembers(np.zeros((20, 3)))
    m = DEQUnmix.from_endmembers(E)
    with pytest.raises(ValueError, match="bands"):
        m(torch.zeros(1, 20, 4))


def _tiny(seed: int = 0, n_bands: int = 10, r: int = 3, h: int = 4, w: int = 5, interior: bool = True):
    rng = np.random.default_rng(seed)
    E = rng.uniform(0.1, 1.0, (n_bands, r))
    alpha = np.full(r, 5.0 if interior else 0.3)
    A = rng.dirichlet(alpha, size=(h, w)).transpose(2, 0, 1)
    Y = np.einsum("br,ryx->byx", E, A) + rng.normal(0, 0.002 if interior else 0.05, (n_bands, h, w))
    return E, torch.as_tensor(Y)[None]


def test_spectral_radius_matches_the_exact_jacobian() -> None:
    E, Y = _tiny(1)
    m = _perturb(DEQUnmix.from_endmembers(E, seed=0, hidden=4), 0.05).double()
    with torch.no_grad():
        A = m(Y, max_iter=300, tol=1e-10, warn=False)
    f = m._map(Y, m.endmember_matrix())
    J = torch.autograd.functional.jacobian(f, A).reshape(A.numel(), A.numel())
    rho = float(torch.linalg.eigvals(J).abs().max())
    assert abs(m.spectral_radius(Y, A, iters=300) - rho) < 2e-2 * rho


def test_preconditioned_operator() -> None:
    E, Y = _tiny(2)  # abundances well inside the simplex: FCLS is an interior (KKT) point
    pgd = DEQUnmix.from_endmembers(E, seed=0).double()
    pre = DEQUnmix.from_endmembers(E, seed=0, precondition=1e-3).double()
    K = pre.step_matrix()
    torch.testing.assert_close(K.sum(0), torch.zeros(3, dtype=K.dtype), atol=1e-9, rtol=0)  # K 1 = 0
    A0 = torch.full((1, 3, 4, 5), 1 / 3, dtype=torch.float64)
    with torch.no_grad():
        a_pgd = pgd(Y, A0=A0, max_iter=5000, tol=1e-10, warn=False, solver="plain")
        n_pgd = pgd.last_info.n_iter
        a_pre = pre(Y, A0=A0, max_iter=5000, tol=1e-10, warn=False, solver="plain")
        n_pre = pre.last_info.n_iter
        out = pre.operator(torch.rand(1, 3, 4, 5, dtype=torch.float64), Y)
    assert float(out.min()) >= 0 and torch.allclose(out.sum(1), torch.ones(1, 4, 5, dtype=out.dtype))
    assert float(a_pgd.min()) > 0.01  # interior solution
    torch.testing.assert_close(a_pre, a_pgd, atol=1e-5, rtol=0)  # same equilibrium (FCLS) ...
    assert n_pre < n_pgd / 3  # ... reached in far fewer iterations
    assert pre.spectral_radius(Y, a_pre) < 0.5 * pgd.spectral_radius(Y, a_pgd)
    with pytest.raises(ValueError, match="precondition"):
        DEQUnmix.from_endmembers(E, precondition=-1.0)


def test_accessor_preconditioned_default_halo(scene) -> None:
    cube, E, _ = scene
    model = _perturb(DEQUnmix.from_endmembers(E, seed=0, precondition=1e-3), 0.05)
    plain = DEQUnmix.from_endmembers(E, seed=0, precondition=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # fast, converged solves
        whole = cube.unmix.deq(model).values
        tiled = cube.chunk({"y": 12, "x": 14}).unmix.deq(model).compute().values  # default halo
        assert float(np.abs(whole - cube.unmix.deq(plain).values).max()) > 1e-2  # the CNN matters
    assert float(np.abs(whole - tiled).max()) < 1e-3
    assert model.solve_stats["max_iterations"] < 40


def test_fit_returns_the_state_of_its_best_loss(scene) -> None:
    cube, E, truth = scene
    T = _shifted_labels(truth)
    Yp, Ap = cube.values.reshape(20, -1).T[:64], T.reshape(3, -1).T[:64]
    m = DEQUnmix.from_endmembers(E, seed=0, hidden=8, kernel_size=1, precondition=1e-3)
    h = m.fit(Yp, Ap, epochs=8, batch_size=64, lr=3e-2, seed=0, progress=False, train_max_iter=None)
    with torch.no_grad():
        pred = m(torch.as_tensor(Yp), tol=m.config["tol"])
    loss = float((pred - torch.as_tensor(Ap)).pow(2).sum(1).mean())
    assert loss == pytest.approx(h["best_loss"], rel=1e-2, abs=1e-6)
    # labels the start already fits (the truth itself): a diverging lr cannot make the result worse
    Yt, At = cube.values.reshape(20, -1).T[:96], truth.values.reshape(3, -1).T[:96]
    m2 = DEQUnmix.from_endmembers(E, seed=0, hidden=8, kernel_size=1)
    with torch.no_grad():
        start = float((m2(torch.as_tensor(Yt)) - torch.as_tensor(At)).pow(2).sum(1).mean())
    h2 = m2.fit(Yt, At, epochs=3, batch_size=32, lr=0.5, seed=0, progress=False)
    assert h2["loss"][0] == pytest.approx(start, rel=1e-4) and h2["best_loss"] <= start * (1 + 1e-4)
    with torch.no_grad():
        after = float((m2(torch.as_tensor(Yt)) - torch.as_tensor(At)).pow(2).sum(1).mean())
    assert after == pytest.approx(h2["best_loss"], rel=1e-2, abs=1e-7)
