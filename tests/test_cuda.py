"""The ``device="cuda"`` paths, against the CPU results. Skipped where torch sees no CUDA GPU.

CPU is the tested path in CI; these run on a machine with an NVIDIA GPU (the project's GPU checks:
``pytest tests/test_cuda.py``). Each compares the GPU's map with the CPU's on the same input, so a kernel
that silently ran on the wrong device, lost the constraints or mixed up pixels fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xr_unmix
from xr_unmix.models.registry import load_model
from xr_unmix.solvers.sunsal.solve import fcls, sunsal_solve

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: torch.cuda.is_available() is False here")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sunsal_on_cuda_equals_cpu(rng, dtype: str) -> None:
    E = rng.uniform(0.05, 0.9, (60, 6))
    A = rng.dirichlet(np.ones(6), 2000).T
    Y = E @ A + 0.002 * rng.standard_normal((60, 2000))
    tol = 1e-4 if dtype == "float32" else 1e-7
    for kw in ({}, {"lam": 1e-3}):
        cpu = sunsal_solve(Y, E, dtype=dtype, **kw)
        gpu = sunsal_solve(Y, E, dtype=dtype, device="cuda", **kw)
        assert gpu.device.type == "cuda"
        np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), atol=tol)
    a = fcls(Y, E, dtype=dtype, device="cuda")
    assert (a >= 0).all() and torch.allclose(a.sum(0), torch.ones_like(a.sum(0)), atol=1e-4)


@pytest.mark.parametrize("scene", [{"ny": 48, "nx": 40, "snr_db": 40}], indirect=True)
@pytest.mark.parametrize("name", ["fcls", "sunsal", "admm", "deq"])
def test_accessor_on_cuda_equals_cpu(scene, name: str) -> None:
    """numpy and Dask cubes, each estimator: the GPU map is the CPU map, with the same coords and CRS."""
    cube, E, _ = scene
    args = {"fcls": (E,), "sunsal": (E,), "admm": (xr_unmix.UADMMNet.from_endmembers(E),),
            "deq": (xr_unmix.DEQUnmix.from_endmembers(E, seed=0),)}[name]
    kw = {"lam": 1e-3} if name == "sunsal" else {}
    cpu = getattr(cube.unmix, name)(*args, **kw)
    for c in (cube, cube.chunk({"y": 24, "x": 20})):
        gpu = getattr(c.unmix, name)(*args, device="cuda", **kw).compute()
        np.testing.assert_allclose(gpu.values, cpu.values, atol=2e-4)
        assert gpu.dims == cpu.dims and gpu.rio.crs == cpu.rio.crs
        np.testing.assert_array_equal(gpu.x.values, cpu.x.values)


@pytest.mark.filterwarnings("ignore::xr_unmix.errors.TrainingWarning")  # 3 epochs need not improve
@pytest.mark.parametrize("scene", [{"ny": 64, "nx": 64, "snr_db": 35, "seed": 3}], indirect=True)
def test_deq_trains_on_cuda_and_its_file_runs_on_cpu(scene, tmp_path) -> None:
    """``fit_scene`` on the GPU moves the weights; the saved file loads on the CPU and gives the GPU's map."""
    cube, E, _ = scene
    model = xr_unmix.DEQUnmix.from_endmembers(E, seed=0).to("cuda")
    w0 = [p.detach().clone() for p in model.parameters()]
    model.fit_scene(cube, epochs=3, seed=0, progress=False, keep_best=False, discrepancy=None)
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(w0, model.parameters(), strict=True))
    on_gpu = cube.unmix.deq(model, device="cuda").values
    path = model.cpu().save(tmp_path / "deq.safetensors")
    again = load_model(path)
    np.testing.assert_allclose(cube.unmix.deq(again).values, on_gpu, atol=2e-4)


@pytest.mark.parametrize("scene", [{"ny": 32, "nx": 32, "snr_db": 40}], indirect=True)
def test_uadmm_trains_on_cuda(scene) -> None:
    cube, E, truth = scene
    net = xr_unmix.UADMMNet.from_endmembers(E).to("cuda")
    Y = cube.values.reshape(cube.sizes["band"], -1).T
    A = truth.values.reshape(truth.sizes["endmember"], -1).T
    hist = net.fit(Y, A, epochs=3, seed=0, progress=False)
    assert all(p.device.type == "cuda" for p in net.parameters())
    assert np.isfinite(hist["loss"]).all()
    ab = cube.unmix.admm(net.cpu(), device="cuda").values
    assert np.isfinite(ab).all() and np.allclose(ab.sum(0), 1.0, atol=1e-3)
