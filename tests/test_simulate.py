"""xr_unmix.simulate: synthetic mixtures of known endmembers."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xr_unmix
from xr_unmix.simulate import simulate


@pytest.fixture
def E() -> xr.DataArray:
    rng = np.random.default_rng(3)
    return xr.DataArray(rng.uniform(0.05, 0.9, (30, 4)), dims=("band", "endmember"),
                        coords={"endmember": ["a", "b", "c", "d"]})


def test_shapes_constraints_and_mixing(E: xr.DataArray) -> None:
    Y, A = xr_unmix.simulate(E, 3000, snr_db=None, seed=0)
    assert Y.shape == (3000, 30) and A.shape == (3000, 4)
    assert Y.dtype == np.float32 and A.dtype == np.float32
    assert (A >= 0).all()
    np.testing.assert_allclose(A.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(Y, A.astype(np.float64) @ E.values.T, rtol=1e-5, atol=1e-6)
    active = (A > 0).sum(1)
    # pure, sparse (2-3 endmembers) and fully mixed pixels all occur
    assert 0.05 < np.mean(active == 1) < 0.15
    assert (active == 2).any() and (active == 3).any() and (active == 4).any()


def test_plain_array_and_max_active() -> None:
    E = np.random.default_rng(0).random((12, 5))
    Y, A = simulate(E, 500, snr_db=None, seed=1, max_active=2, pure_fraction=0.0)
    assert Y.shape == (500, 12)
    assert ((A > 0).sum(1) == 2).all()
    with pytest.raises(ValueError, match="max_active"):
        simulate(E, 10, max_active=9)


def test_noise_level_matches_snr(E: xr.DataArray) -> None:
    clean, A = simulate(E, 20000, snr_db=None, seed=5)
    noisy, A2 = simulate(E, 20000, snr_db=15.0, seed=5)
    np.testing.assert_array_equal(A, A2)  # same draws, noise added after
    noise = noisy.astype(np.float64) - clean
    snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))
    assert snr == pytest.approx(15.0, abs=0.1)


def test_seeded_reproducibility(E: xr.DataArray) -> None:
    a = simulate(E, 100, seed=7)
    b = simulate(E, 100, seed=7)
    c = simulate(E, 100, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_spatial_patches_are_smooth_two_endmember_mixtures(E: xr.DataArray) -> None:
    Y, A = simulate(E, 40 * 40, snr_db=None, seed=2, spatial=True, patch=10, smooth_size=1)
    maps = A.reshape(40, 40, 4)
    # without smoothing: every 10x10 patch is constant with fractions {0.8, 0.2}
    for i in range(0, 40, 10):
        for j in range(0, 40, 10):
            p = maps[i:i + 10, j:j + 10].reshape(100, 4)
            assert (p == p[0]).all()
            np.testing.assert_allclose(np.sort(p[0])[-2:], [0.2, 0.8], atol=1e-6)
    _, As = simulate(E, 40 * 40, snr_db=None, seed=2, spatial=True)
    ms = As.reshape(40, 40, 4)
    np.testing.assert_allclose(As.sum(1), 1.0, atol=1e-6)
    # the Gaussian filter smooths patch edges: neighbouring pixels differ less
    assert np.abs(np.diff(ms, axis=0)).max() < np.abs(np.diff(maps, axis=0)).max()
    with pytest.raises(ValueError, match="square"):
        simulate(E, 1000, spatial=True)
    with pytest.raises(ValueError, match="image_shape"):
        simulate(E, 100, spatial=True, image_shape=(5, 10))
