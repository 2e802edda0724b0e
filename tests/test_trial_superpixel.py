"""recipes/trial_superpixel_prox.py (issue 16's superpixel-guided prox, a measured trial; scikit-image)."""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from xr_unmix.errors import ConvergenceWarning
from xr_unmix.models.deq import DEQUnmix
from xr_unmix.models.registry import model_from_bytes, model_to_bytes
from xr_unmix.testing import make_cube, make_endmembers

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def trial():
    """The recipe module (skipped without scikit-image, the trial's optional dependency)."""
    pytest.importorskip("skimage")
    sys.path.insert(0, str(RECIPES))
    try:
        yield importlib.import_module("trial_superpixel_prox")
    finally:
        sys.path.remove(str(RECIPES))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scene():
    """(cube, endmembers, truth): 24 x 28 px, 20 bands, 3 endmembers, 30 dB."""
    return make_cube(24, 28, make_endmembers(n_bands=20, n_endmembers=3, seed=1), snr_db=30, seed=2)


def test_superpixels_cover_the_image_and_keep_invalid_pixels_apart(trial, scene) -> None:
    cube = scene[0]
    Y = np.asarray(cube.values, dtype=np.float64).copy()
    Y[:, 3, 4] = 0.0  # a filled nodata pixel
    for method in ("slic", "felzenszwalb"):
        lab = trial.superpixels(Y, 6, method)
        assert lab.shape == Y.shape[1:] and lab.min() == 0
        assert np.array_equal(np.unique(lab), np.arange(lab.max() + 1))  # consecutive ids
        assert 4 < lab.max() + 1 < Y.shape[1] * Y.shape[2] // 4  # real regions, not pixels
        assert (lab == lab[3, 4]).sum() == 1  # the invalid pixel is pooled with nothing


def test_segments_pool_smooth_and_broadcast(trial) -> None:
    lab = np.array([[[0, 0, 1], [2, 2, 1]]])  # (1, 2, 3): three regions, 0-1, 0-2, 1-2 adjacent
    seg = trial.Segments(lab, torch.device("cpu"))
    Z = torch.tensor([[[[1.0, 3.0, 5.0], [0.0, 2.0, 7.0]]]])  # (1, 1, 2, 3)
    S = seg.means(Z)
    assert torch.allclose(S[:, 0], torch.tensor([2.0, 6.0, 1.0]))
    assert torch.allclose(seg.broadcast(S, Z)[0, 0], torch.tensor([[2.0, 2.0, 6.0], [1.0, 1.0, 6.0]]))
    assert torch.allclose(seg.smooth(S)[:, 0], torch.full((3,), 3.0))  # all adjacent: one average


def test_untrained_is_the_default_deq_and_trains(trial, scene) -> None:
    cube, E, _ = scene
    base = cube.unmix.deq(DEQUnmix.from_endmembers(E, seed=0)).values
    model = trial.DEQSuperpixel.from_endmembers(E, seed=0, sp_size=5)
    np.testing.assert_allclose(cube.unmix.deq(model).values, base, atol=1e-6)
    pooled = trial.DEQSuperpixel.from_endmembers(E, seed=0, sp_size=5, sp_weight=0.5)
    assert float(np.abs(cube.unmix.deq(pooled).values - base).max()) > 1e-2  # the blend acts
    hist = model.fit_scene(cube, epochs=3, seed=0, progress=False)
    assert len(hist["loss"]) == 4 and np.isfinite(hist["loss"]).all()


def test_tiled_matches_whole_with_a_halo_covering_the_superpixels(trial) -> None:
    E = make_endmembers(n_bands=20, n_endmembers=3, seed=1)
    cube, E, _ = make_cube(48, 56, E, snr_db=30, seed=2)
    model = trial.DEQSuperpixel.from_endmembers(E, seed=0, sp_size=4, sp_weight=0.5, halo=0,
                                                learn_sp_weight=False, sp_method="felzenszwalb",
                                                max_iter=300, tol=1e-6)
    assert model.tile_spec.halo == 8 and model.tile_spec.blend  # at least 2 sp_size
    model.config["halo"] = 16
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        whole = cube.unmix.deq(model).values
        tiled = cube.chunk({"y": 24, "x": 28}).unmix.deq(model).compute().values
    # Felzenszwalb is nearly local: with a 16 px halo, tiles reproduce the whole scene's superpixels
    # but for a few pixels (SLIC is not: its segments move with the tile's grid, median |diff| ~0.05)
    diff = np.abs(whole - tiled)
    assert float(np.median(diff)) < 1e-4 and float(np.quantile(diff, 0.95)) < 0.01, diff.max()


def test_model_bytes_round_trip_without_pickle(trial, scene) -> None:
    cube, E, _ = scene
    model = trial.DEQSuperpixel.from_endmembers(E, seed=0, sp_size=5, sp_weight=0.3, sp_hidden=4,
                                                sp_method="felzenszwalb")
    with torch.no_grad():
        model.gcn.lin2.weight.normal_(0, 0.01)
    data = model_to_bytes(model)
    assert b"pickle" not in data[:2000]
    back = model_from_bytes(data)
    assert type(back) is trial.DEQSuperpixel and back.config == model.config
    np.testing.assert_array_equal(cube.unmix.deq(back).values, cube.unmix.deq(model).values)


def test_bad_options(trial, scene) -> None:
    E = scene[1]
    with pytest.raises(ValueError, match="sp_method"):
        trial.DEQSuperpixel.from_endmembers(E, sp_method="watershed")
    with pytest.raises(ValueError, match="sp_weight"):
        trial.DEQSuperpixel.from_endmembers(E, sp_weight=1.5)


def test_eval_deq_without_scikit_image_is_one_line(monkeypatch, capsys) -> None:
    import importlib.util

    sys.path.insert(0, str(RECIPES))
    try:
        import _eval_report

        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "skimage" else real(name, *a))
        with pytest.raises(SystemExit) as exc:
            _eval_report.parse_args(["--methods", "fcls,deq_sp"])
    finally:
        sys.path.remove(str(RECIPES))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [("eval_deq: method deq_sp (the superpixel-prox trial) needs scikit-image: "
                    "pip install scikit-image")]
