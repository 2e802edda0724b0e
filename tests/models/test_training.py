"""The shared training loop: keep-best, the one divergence policy, seeding (tests that can fail)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xr_unmix.models import deq_training
from xr_unmix.models.deq import DEQUnmix
from xr_unmix.models.training import Diverged, Epoch, TrainingWarning, train_loop


def _sgd_problem():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    return lin, x, y


@pytest.mark.parametrize("how", ["nan loss", "exploding loss", "raised"])
def test_diverging_step_restores_the_best_epochs_weights(how: str) -> None:
    lin, x, y = _sgd_problem()
    opt = torch.optim.SGD(lin.parameters(), lr=0.05)
    states: dict[int, list[torch.Tensor]] = {}

    def step(epoch, guard):
        loss = ((lin(x) - y) ** 2).mean()
        states[epoch] = [p.detach().clone() for p in lin.parameters()]  # the state this loss is of
        value = float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if epoch == 6:  # inject the divergence
            with torch.no_grad():
                for p in lin.parameters():
                    p.mul_(1e6)
            if how == "raised":
                raise Diverged("injected")
            return Epoch(math.nan if how == "nan loss" else 1e9, state=states[epoch])
        return Epoch(value, state=states[epoch])

    with pytest.warns(TrainingWarning, match=r"^lin: training diverged at epoch 6: .*; restored epoch 5$"):
        h = train_loop(lin, step, epochs=10, desc="lin", progress=False)
    assert h["best_epoch"] == 5 and h["stopped"].startswith("lin: training diverged at epoch 6")
    assert len(h["loss"]) == (5 if how == "raised" else 6)  # it stopped there
    for p, q in zip(lin.parameters(), states[5], strict=True):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=0)
    assert h["best_loss"] == pytest.approx(min(h["loss"][:5]))


def test_an_ordinary_loss_after_an_exact_start_is_not_called_diverged() -> None:
    """A start that fits almost exactly (1e-12) then a loss of 1e-3 is training, not divergence."""
    lin, _, _ = _sgd_problem()
    losses = [1e-12, 1e-3, 2e-3, 5e3]  # the last is over EXPLODE x EXPLODE_FLOOR: that one diverged

    def step(epoch, guard):
        return Epoch(losses[epoch], state=[p.detach().clone() for p in lin.parameters()])

    with pytest.warns(TrainingWarning, match=r"diverged at epoch 3"):
        h = train_loop(lin, step, epochs=4, first_epoch=0, progress=False)
    assert h["best_epoch"] == 0 and len(h["loss"]) == 4


def test_ineligible_states_are_not_kept_and_seed_is_private() -> None:
    lin, _, _ = _sgd_problem()
    start = [p.detach().clone() for p in lin.parameters()]
    before = torch.random.get_rng_state()

    def step(epoch, guard):
        with torch.no_grad():
            for p in lin.parameters():
                p.add_(torch.randn(p.shape, generator=step.generator))
        return Epoch(1.0 / (epoch + 1), eligible=epoch == 0)  # only the start may be kept

    h = train_loop(lin, step, epochs=4, first_epoch=0, seed=3, progress=False)
    assert h["best_epoch"] == 0 and torch.equal(torch.random.get_rng_state(), before)
    for p, q in zip(lin.parameters(), start, strict=False):
        assert not torch.equal(p.detach(), q)  # epoch 0's step moved it: the kept state is after it
    assert not lin.training


def test_fit_scene_divergence_restores_the_best_epoch(scene, monkeypatch) -> None:
    cube, E, _ = scene
    m = DEQUnmix.from_endmembers(E, seed=0, hidden=8)
    real = deq_training.scene_objective
    seen: list[dict[str, torch.Tensor]] = []

    def objective(model, *a, **k):
        seen.append({n: v.detach().clone() for n, v in model.state_dict().items()})
        out = real(model, *a, **k)
        return out * math.nan if len(seen) == 5 else out  # epoch 4 diverges

    monkeypatch.setattr(deq_training, "scene_objective", objective)
    with pytest.warns(TrainingWarning, match="DEQUnmix.fit_scene: training diverged at epoch 4"):
        h = m.fit_scene(cube, epochs=10, seed=0, lr=3e-3, discrepancy=None, progress=False)
    assert len(h["loss"]) == 4 and 0 <= h["best_epoch"] < 4
    for n, v in m.state_dict().items():
        torch.testing.assert_close(v, seen[h["best_epoch"]][n], rtol=0, atol=0)


def test_fit_scene_reports_the_saved_models_objective(scene) -> None:
    cube, E, _ = scene
    Ebad = E.copy(data=np.clip(E.values * 0.8 + 0.05, 0, None))
    m = DEQUnmix.from_endmembers(Ebad, seed=0, hidden=8)
    h = m.fit_scene(cube, epochs=10, seed=0, progress=False)
    assert h["improved"] and h["best_epoch"] > 0
    assert h["best_loss"] == h["loss"][h["best_epoch"]]
    E0 = torch.as_tensor(Ebad.values, dtype=m.E.dtype)  # the anchor's reference: the start
    Y, V = deq_training.SceneData(np.asarray(cube.values), m.E.dtype, m.E.device, 0).whole()
    with torch.no_grad():  # the returned model, solved afresh from FCLS
        obj = float(deq_training.scene_objective(m, Y, V, m.equilibrium(Y, warn=False), E0))
    assert obj == pytest.approx(h["final_loss"], rel=1e-5) and h["final_converged"]
    assert f"-> {h['final_loss']:.6g} for the returned model (best state: epoch {h['best_epoch']}" \
        in h["summary"]


def test_fit_scene_that_does_not_improve_says_so(scene) -> None:
    cube, E, _ = scene
    m = DEQUnmix.from_endmembers(E, seed=0, hidden=8)
    start = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.warns(TrainingWarning, match=r"did not improve on its start: objective [0-9.e-]+ at the "
                                             r"start, [0-9.e+-]+ at best after training \(epoch \d+\)"):
        h = m.fit_scene(cube.chunk({"y": 8, "x": 8}), epochs=4, seed=1, lr=5.0, lr_endmembers=1.0,
                        max_pixels=100, tile_size=12, tiles_per_epoch=2, discrepancy=None,
                        progress=False)
    assert not h["improved"] and h["best_epoch"] == 0 and not h["whole_scene"]
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, start[k], rtol=0, atol=0)


@pytest.mark.parametrize("scene", [{"ny": 24, "nx": 28, "n_bands": 20, "snr_db": 30, "seed": 2}],
                         indirect=True)
def test_fit_scene_discrepancy_guard(scene) -> None:
    from xr_unmix.extraction import noise_sigma

    cube, E, _ = scene
    Y = cube.values.reshape(20, -1).T
    sigma = noise_sigma(Y)
    # the noise of make_cube at 30 dB: std = RMS signal / 10^(30/20)
    assert sigma == pytest.approx(np.sqrt(np.mean(Y ** 2)) / 10 ** 1.5, rel=0.15)
    m = DEQUnmix.from_endmembers(E, seed=0, hidden=4)  # the true endmembers: FCLS fits to the noise
    start = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.warns(TrainingWarning, match=r"training skipped: the start already reconstructs the "
                                             r"scene to the noise level \(RMS [0-9.e-]+ <= 1.5 x noise"):
        h = m.fit_scene(cube, epochs=5, seed=0, progress=False)
    assert h["skipped"] and not h["improved"] and h["best_epoch"] == 0 and len(h["loss"]) == 1
    assert h["start_rms"] <= 1.5 * h["noise_sigma"]
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, start[k], rtol=0, atol=0)
    bad = DEQUnmix.from_endmembers(E.copy(data=np.clip(E.values * 0.8 + 0.05, 0, None)), seed=0,
                                   hidden=4)  # wrong endmembers: far above the noise, training runs
    h = bad.fit_scene(cube, epochs=3, seed=0, progress=False)
    assert not h["skipped"] and len(h["loss"]) == 4 and h["start_rms"] > 1.5 * h["noise_sigma"]
    h = DEQUnmix.from_endmembers(E, seed=0, hidden=4).fit_scene(cube, epochs=2, seed=0,
                                                                discrepancy=None, progress=False)
    assert not h["skipped"] and len(h["loss"]) == 3  # the guard off: training runs
    with pytest.raises(ValueError, match="n_pixels >= 2"):
        noise_sigma(Y[:1])


def test_fit_scene_bad_input(scene) -> None:
    from xr_unmix.errors import BandMismatchError

    cube, E, _ = scene
    m = DEQUnmix.from_endmembers(E, seed=0, hidden=4)
    nan = cube.where(cube < -1)  # every pixel NaN
    with pytest.raises(ValueError, match=r"^the scene has no valid pixel \(all NaN or nodata\)$"):
        m.fit_scene(nan, epochs=1, progress=False)
    with pytest.raises(ValueError, match="50 random tile draws found no valid pixel"):
        m.fit_scene(nan, epochs=1, max_pixels=10, progress=False)
    with pytest.raises(BandMismatchError, match="the model expects 30 bands but the scene has 19"):
        m.fit_scene(cube.isel(band=slice(0, 19)), epochs=1, progress=False)
    # a scene smaller than one training tile: the tiles are the scene, training runs
    small = cube.isel(y=slice(0, 5), x=slice(0, 6))
    h = m.fit_scene(small, epochs=2, max_pixels=10, tile_size=64, seed=0, discrepancy=None,
                    progress=False)
    assert len(h["loss"]) == 3 and np.isfinite(h["final_loss"])
    with pytest.raises(ValueError, match=r"too small to sample tiles from"):
        m.fit_scene(cube.isel(y=slice(0, 1)), epochs=1, max_pixels=4, progress=False)
