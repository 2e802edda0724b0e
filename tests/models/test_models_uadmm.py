"""U-ADMM-AENet (UADMMNet) and the MNN-AE comparison net: warm start, training, save/load, accessor."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import xr_unmix
from xr_unmix.errors import BandMismatchError, ModelFileError
from xr_unmix.models.base import load_model
from xr_unmix.models.mnnae import MNNAE
from xr_unmix.models.uadmm import UADMMNet
from xr_unmix.simulate import simulate
from xr_unmix.solvers.sunsal import sunsal_solve

NB, R = 24, 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def E() -> xr.DataArray:
    rng = np.random.default_rng(11)
    vals = rng.uniform(0.05, 0.9, (NB, R))
    return xr.DataArray(vals, dims=("band", "endmember"),
                        coords={"band": np.arange(1, NB + 1), "endmember": ["tree", "water", "soil"],
                                "wavelength": ("band", np.linspace(400.0, 2400.0, NB))})


@pytest.fixture(scope="module")
def data(E: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    return simulate(E, 600, snr_db=30, seed=0)


@pytest.mark.parametrize("layers", [1, 2, 5])
@pytest.mark.parametrize("lam,mu", [(0.0, None), (0.02, 0.5), (0.1, 3.0)])
@pytest.mark.parametrize("tied", [False, True])
def test_untrained_equals_k_sunsal_iterations(E: xr.DataArray, data: tuple, layers: int, lam: float,
                                              mu: float | None, tied: bool) -> None:
    Y = data[0][:200].astype(np.float64)
    net = UADMMNet.from_endmembers(E, layers=layers, lam=lam, mu=mu, tied=tied, dtype=torch.float64)
    z = net.iterate(torch.from_numpy(Y)).detach()
    ref = sunsal_solve(Y.T, E.values, lam=lam, mu=net.mu, anc=True, asc=False, normalize=False,
                       adaptive_mu=False, tol=0.0, max_iter=layers, dtype=torch.float64, warn=False).T
    assert float(z.abs().max()) > 0.1  # not trivially zero
    torch.testing.assert_close(z, ref, rtol=1e-9, atol=1e-9)
    out = net(torch.from_numpy(Y)).detach()
    torch.testing.assert_close(out, ref / ref.sum(1, keepdim=True), rtol=1e-8, atol=1e-8)
    # float32 parameters by default, and still equal to float tolerance
    net32 = UADMMNet.from_endmembers(E, layers=layers, lam=lam, mu=mu, tied=tied)
    assert net32.W.dtype == torch.float32
    torch.testing.assert_close(net32.iterate(torch.from_numpy(Y).float()).detach(), ref.float(),
                               rtol=1e-4, atol=1e-4)


def test_untrained_mnnae_equals_k_ista_iterations(E: xr.DataArray, data: tuple) -> None:
    Y = data[0][:50].astype(np.float64)
    Em = E.values
    L = np.linalg.eigvalsh(Em.T @ Em)[-1]
    lam = 0.01
    x = np.zeros((50, R))
    for _ in range(2):
        v = x - (x @ Em.T - Y) @ Em / L
        x = np.maximum(np.sign(v) * np.maximum(np.abs(v) - lam / L, 0), 0)
    net = MNNAE.from_endmembers(E, layers=2, lam=lam, dtype=torch.float64)
    np.testing.assert_allclose(net.iterate(torch.from_numpy(Y)).detach().numpy(), x, rtol=1e-10, atol=1e-12)


def test_model_surface(E: xr.DataArray) -> None:
    net = UADMMNet.from_endmembers(E, layers=3)
    assert (net.n_bands, net.n_endmembers) == (NB, R)
    assert net.endmember_names == ["tree", "water", "soil"]
    assert net.wavelengths == pytest.approx(list(np.linspace(400.0, 2400.0, NB)))
    assert net.halo == 0
    assert net.W.shape == (3, R, NB) and net.B.shape == (3, R, R)
    assert UADMMNet.from_endmembers(E, layers=3, tied=True).W.shape == (1, R, NB)
    em = net.endmembers
    assert em.dims == ("band", "endmember") and list(em.endmember.values) == ["tree", "water", "soil"]
    np.testing.assert_allclose(em.values, E.values, rtol=1e-6)
    plain = UADMMNet.from_endmembers(np.asarray(E.values))
    assert plain.endmember_names == ["em0", "em1", "em2"] and plain.wavelengths is None
    with pytest.raises(ValueError, match="layers"):
        UADMMNet.from_endmembers(E, layers=0)
    with pytest.raises(ValueError, match="mu"):
        UADMMNet.from_endmembers(E, mu=-1.0)
    with pytest.raises(BandMismatchError, match=f"expects {NB} bands"):
        net(torch.zeros(4, NB + 1))


ADAM = dict(optimizer="adam", subspace=None, ridge=0.0, batch_size=32, lr=1e-2)


@pytest.mark.parametrize("cls,kw", [(UADMMNet, ADAM), (MNNAE, dict(batch_size=32, lr=1e-2)),
                                    (UADMMNet, {}), (MNNAE, dict(optimizer="lbfgs", subspace=4, ridge=1e-3)),
                                    (UADMMNet, dict(ADAM, subspace=5, ridge=1e-3))],
                         ids=["uadmm-adam", "mnnae-default", "uadmm-default", "mnnae-lbfgs-subspace",
                              "uadmm-adam-subspace"])
def test_fit_improves_and_is_reproducible(cls: type, kw: dict, E: xr.DataArray, data: tuple) -> None:
    Y, A = data[0][:256], data[1][:256]
    Yte, Ate = simulate(E, 300, snr_db=30, seed=1)
    Em = E.values * np.linspace(0.8, 1.2, NB)[:, None]  # endmembers off: training has something to fix

    def trained(seed: int) -> tuple:
        net = cls.from_endmembers(Em, mu=0.5) if cls is UADMMNet else cls.from_endmembers(Em)
        before = xr_unmix.metrics.rmse(net.predict(Yte).T, Ate.T)
        h = net.fit(Y, A, epochs=5, seed=seed, progress=False, **kw)
        return net, h, before

    net, h, before = trained(3)
    after = xr_unmix.metrics.rmse(net.predict(Yte).T, Ate.T)
    assert h["time_s"] > 0 and h["n_samples"] == 256
    if h["optimizer"] == "adam":
        assert len(h["loss"]) == 5 and h["loss"][-1] < h["loss"][0]
    else:  # L-BFGS: one "epoch" of at most 5 iterations; loss_evals has every evaluation
        assert len(h["loss"]) == 1 and h["loss"][0] < h["loss_evals"][0]
    assert after < 0.7 * before
    pred = net.predict(Yte)
    assert (pred >= 0).all()
    np.testing.assert_allclose(pred.sum(1), 1.0, atol=1e-5)
    net2, h2, _ = trained(3)
    assert h2["loss"] == h["loss"]
    torch.testing.assert_close(net2.W, net.W, rtol=0, atol=0)
    assert not net.training


def test_fit_rejects_bad_labels(E: xr.DataArray, data: tuple) -> None:
    Y, A = data
    net = UADMMNet.from_endmembers(E)
    with pytest.raises(ValueError, match="sum to one"):
        net.fit(Y, A * 0.9, epochs=1)
    with pytest.raises(ValueError, match=f"{R} endmembers"):
        net.fit(Y, A[:, :2], epochs=1)
    with pytest.raises(ValueError, match=f"{NB} bands"):
        net.fit(Y[:, :5], A, epochs=1)
    with pytest.raises(ValueError, match="spectra but"):
        net.fit(Y[:10], A, epochs=1)
    neg = A.copy()
    neg[0] = [1.5, -0.5, 0.0]
    with pytest.raises(ValueError, match="non-negative"):
        net.fit(Y, neg, epochs=1)


def _cube(E: xr.DataArray, seed: int = 4) -> tuple[xr.DataArray, np.ndarray]:
    Y, A = simulate(E, 12 * 10, snr_db=40, seed=seed)
    cube = xr.DataArray(Y.T.reshape(NB, 12, 10), dims=("band", "y", "x"),
                        coords={"band": np.arange(1, NB + 1), "y": np.arange(12) * -30.0,
                                "x": np.arange(10) * 30.0})
    return cube, A


def test_save_load_apply_identical(tmp_path: Path, E: xr.DataArray, data: tuple) -> None:
    net = UADMMNet.from_endmembers(E, layers=2, lam=0.01)
    net.fit(*data, epochs=2, lr=1e-3, seed=0, progress=False)
    path = net.save(tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert type(loaded) is UADMMNet and loaded.config == net.config
    assert loaded.endmember_names == net.endmember_names and loaded.wavelengths == net.wavelengths
    for k, v in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    cube, _ = _cube(E)
    cube[:, 3, 4] = np.nan
    direct = net.predict(cube.values.reshape(NB, -1).T[np.isfinite(cube.values.reshape(NB, -1).T).all(1)])
    a_np = cube.unmix.admm(net)
    a_path = cube.unmix.admm(path)
    a_dask = cube.chunk({"y": 5, "x": 4}).unmix.admm(str(path))
    assert a_dask.chunks is not None
    a_dask = a_dask.compute()
    assert a_np.dims == ("endmember", "y", "x") and list(a_np.endmember.values) == net.endmember_names
    np.testing.assert_array_equal(a_np.values, a_path.values)
    np.testing.assert_allclose(a_dask.values, a_np.values, rtol=1e-6, atol=1e-7)
    assert np.isnan(a_np.values[:, 3, 4]).all()
    flat = a_np.values.reshape(R, -1).T
    np.testing.assert_allclose(flat[np.isfinite(flat).all(1)], direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a_np.y.values, cube.y.values)
    # the MNN-AE net saves and loads too, but is not a UADMMNet for cube.unmix.admm
    m = MNNAE.from_endmembers(E)
    p2 = m.save(tmp_path / "mnn.safetensors")
    assert type(load_model(p2)) is MNNAE
    with pytest.raises(TypeError, match="UADMMNet"):
        cube.unmix.admm(p2)


def test_band_mismatch_is_clear(E: xr.DataArray) -> None:
    cube, _ = _cube(E)
    net = UADMMNet.from_endmembers(E)
    with pytest.raises(BandMismatchError, match=f"expects {NB} bands but the cube has {NB - 2}"):
        cube.isel(band=slice(2, None)).unmix.admm(net)


def _rewrite_metadata(src: Path, dst: Path, edit) -> None:  # type: ignore[no-untyped-def]
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header["__metadata__"]["xr_unmix"])
    edit(meta, header)
    header["__metadata__"]["xr_unmix"] = json.dumps(meta)
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    dst.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])


def test_corrupt_and_foreign_files(tmp_path: Path, E: xr.DataArray) -> None:
    from safetensors.torch import save_file

    good = UADMMNet.from_endmembers(E).save(tmp_path / "good.safetensors")
    raw = good.read_bytes()
    cases = {}
    (tmp_path / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    cases["trunc"] = tmp_path / "trunc.safetensors"
    (tmp_path / "rand.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    cases["rand"] = tmp_path / "rand.safetensors"
    save_file({"w": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"), metadata={"other": "x"})
    cases["foreign"] = tmp_path / "foreign.safetensors"

    def more_layers(meta, header):  # type: ignore[no-untyped-def]
        meta["config"]["layers"] = 3

    def fewer_bands(meta, header):  # type: ignore[no-untyped-def]
        meta["config"]["n_bands"] = NB - 1
        meta["config"]["wavelengths"] = meta["config"]["wavelengths"][:-1]

    def unknown_key(meta, header):  # type: ignore[no-untyped-def]
        meta["config"]["evil"] = "__import__('os')"

    def bad_class(meta, header):  # type: ignore[no-untyped-def]
        meta["class"] = "Popen"

    for name, fn in {"layers": more_layers, "bands": fewer_bands, "key": unknown_key,
                     "class": bad_class}.items():
        _rewrite_metadata(good, tmp_path / f"{name}.safetensors", fn)
        cases[name] = tmp_path / f"{name}.safetensors"
    assert type(load_model(good)) is UADMMNet
    for name, p in cases.items():
        with pytest.raises(ModelFileError):
            load_model(p)
        cube, _ = _cube(E)
        with pytest.raises(ModelFileError):
            cube.unmix.admm(p)
    with pytest.raises(ModelFileError, match="no model file"):
        load_model(tmp_path / "missing.safetensors")


def test_fit_on_labelled_pixels_of_a_cube(E: xr.DataArray) -> None:
    cube, A = _cube(E)
    amap = xr.DataArray(A.T.reshape(R, 12, 10), dims=("endmember", "y", "x"),
                        coords={"endmember": ["tree", "water", "soil"], "y": cube.y, "x": cube.x})
    amap[:, :6] = np.nan  # only the lower half is labelled
    net = UADMMNet.from_endmembers(E)
    h = net.fit(cube.transpose("y", "x", "band"), amap, epochs=1, seed=0, progress=False)
    assert h["n_samples"] == 60
    with pytest.raises(ValueError, match="labelled"):
        net.fit(cube, amap.where(amap < -1), epochs=1)


def test_negative_learnt_threshold_acts_as_zero(E: xr.DataArray, data: tuple) -> None:
    Y = torch.from_numpy(data[0][:50])
    net = UADMMNet.from_endmembers(E, lam=0.0)
    ref = net(Y).detach()
    with torch.no_grad():
        net.theta.fill_(-0.5)
    torch.testing.assert_close(net(Y).detach(), ref)
    with torch.no_grad():
        net.theta.fill_(0.05)
    assert not torch.allclose(net(Y).detach(), ref)


def test_fit_defaults(E: xr.DataArray, data: tuple) -> None:
    """UADMMNet: L-BFGS + whitened 6-dim subspace + ridge 1e-3 (docs/uadmm.md); MNNAE: Adam, W directly."""
    h = UADMMNet.from_endmembers(E).fit(*data, epochs=2, progress=False)
    assert (h["optimizer"], h["subspace"], h["ridge"], h["lr"]) == ("lbfgs", 6, 1e-3, 1.0)
    h = MNNAE.from_endmembers(E).fit(*data, epochs=2, progress=False)
    assert (h["optimizer"], h["subspace"], h["ridge"], h["lr"]) == ("adam", None, 0.0, 1e-3)


def test_subspace_fit_moves_w_only_along_the_training_spectra(E: xr.DataArray, data: tuple) -> None:
    """W - W0 lies in the span of the top principal directions of the training spectra; the rest of W
    (e.g. a direction orthogonal to every training spectrum) is the warm start's."""
    Y, A = data[0][:200].astype(np.float64), data[1][:200]
    net = UADMMNet.from_endmembers(E)
    W0 = net.W.detach().clone().double()
    callback_W: list[torch.Tensor] = []
    h = net.fit(Y, A, epochs=4, subspace=3, ridge=0.0, progress=False, optimizer="adam", lr=1e-2,
                callback=lambda ep, m: callback_W.append(m.W.detach().clone()) or {"w": float(m.W.sum())})
    assert h["subspace"] == 3 and len(h["w"]) == 4
    dW = net.W.detach().double() - W0
    assert float(dW.abs().max()) > 1e-4  # it trained
    _, _, Vh = np.linalg.svd(Y, full_matrices=False)
    top = torch.from_numpy(Vh[:3]).double()
    resid = dW - dW @ top.T @ top  # the part of each row of dW outside the 3-dim subspace
    assert float(resid.abs().max()) < 1e-5 * float(dW.abs().max()) + 1e-7
    # callbacks see the current W; the net ends in the state of its best epoch (keep-best)
    torch.testing.assert_close(callback_W[h["best_epoch"] - 1], net.W.detach())
    # a large ridge keeps W at the warm start
    stiff = UADMMNet.from_endmembers(E)
    stiff.fit(Y, A, epochs=4, subspace=3, ridge=1e6, progress=False)
    assert float((stiff.W.detach().double() - W0).abs().max()) < 1e-3 * float(dW.abs().max())
    # subspace larger than the rank of the spectra is clipped, not an error
    h = UADMMNet.from_endmembers(E).fit(Y[:2], A[:2], epochs=1, subspace=50, progress=False)
    assert h["subspace"] == 2


def test_fit_option_errors(E: xr.DataArray, data: tuple) -> None:
    net = UADMMNet.from_endmembers(E)
    with pytest.raises(ValueError, match="optimizer"):
        net.fit(*data, epochs=1, optimizer="sgd")
    with pytest.raises(ValueError, match="subspace"):
        net.fit(*data, epochs=1, subspace=0)
    with pytest.raises(ValueError, match="ridge"):
        net.fit(*data, epochs=1, ridge=-1.0)
    with pytest.raises(ValueError, match="schedule"):
        net.fit(*data, epochs=1, schedule="cosine")  # L-BFGS has no lr schedule
    with pytest.raises(ValueError, match="span no direction"):
        net.fit(np.zeros((5, NB)), data[1][:5], epochs=1)


def test_ridge_without_subspace_is_the_response_penalty(E: xr.DataArray, data: tuple) -> None:
    """ridge * sum_k mean_i ||(W_k - W0_k) y_i||^2 with W trained directly: a huge ridge pins W."""
    net = UADMMNet.from_endmembers(E)
    W0 = net.W.detach().clone()
    net.fit(*data, epochs=3, subspace=None, ridge=1e6, progress=False)
    assert float((net.W.detach() - W0).abs().max()) < 1e-5


def test_fit_supervised_lbfgs_with_penalty_solves_ridge_regression() -> None:
    """The shared loop's L-BFGS + penalty on a convex problem reaches the closed-form ridge solution."""
    from xr_unmix.models._train import fit_supervised

    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.normal(size=(80, 5)))
    t = X @ torch.from_numpy(rng.normal(size=(5, 2))) + 0.1 * torch.from_numpy(rng.normal(size=(80, 2)))
    lin = torch.nn.Linear(5, 2, bias=False).double()
    h = fit_supervised(lin, X, t, epochs=30, lr=1.0, optimizer="lbfgs",
                       penalty=lambda: 0.5 * lin.weight.pow(2).sum(), progress=False,
                       callback=lambda ep, m: {"w0": float(m.weight[0, 0])})
    # mse here = mean_i ||x_i W^T - t_i||^2, so the minimiser is (X^T X / n + 0.5 I)^-1 X^T t / n
    n = X.shape[0]
    ref = torch.linalg.solve(X.T @ X / n + 0.5 * torch.eye(5, dtype=X.dtype), X.T @ t / n).T
    torch.testing.assert_close(lin.weight.detach(), ref, rtol=1e-6, atol=1e-8)
    assert h["optimizer"] == "lbfgs" and len(h["loss"]) == 1 and len(h["w0"]) == 1
    assert h["w0"][0] == pytest.approx(float(ref[0, 0]))
    with pytest.raises(ValueError, match="optimizer"):
        fit_supervised(lin, X, t, epochs=1, optimizer="sgd")


@pytest.mark.parametrize("tied", [False, True])
def test_image_inference_layout_equals_forward(E: xr.DataArray, data: tuple, tied: bool) -> None:
    """unmix_image runs in (R, pixels) layout; it must equal forward on the pixels, trained or not,
    with negative learnt thresholds (clamped at 0) and per-layer parameters that differ."""
    net = UADMMNet.from_endmembers(E, layers=3, lam=0.02, mu=0.5, tied=tied)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        net.W.add_(0.05 * torch.randn(net.W.shape, generator=g))
        net.B.add_(0.05 * torch.randn(net.B.shape, generator=g))
        net.theta.copy_(torch.linspace(-0.1, 0.2, net.theta.numel()))
        net.eta.copy_(torch.linspace(0.7, 1.3, net.eta.numel()))
    Y = torch.from_numpy(data[0][:600].astype(np.float32))  # (n, bands)
    img = Y.T.reshape(NB, 20, 30)
    with torch.inference_mode():
        ref = net(Y).T.reshape(R, 20, 30)
        out = net.unmix_image(img)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert out.is_contiguous()
    # the tiled path with a pixel batch: same numbers through the accessor
    cube = xr.DataArray(img.double().numpy(), dims=("band", "y", "x"),
                        coords={"band": E.band.values, "wavelength": ("band", E.wavelength.values)})
    by_batch = xr_unmix.apply_model(cube, net, batch_size=128).compute()
    np.testing.assert_allclose(by_batch.values, ref.numpy(), rtol=1e-5, atol=1e-6)
