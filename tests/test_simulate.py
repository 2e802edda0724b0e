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


# -- simulate_scene: a whole scene with the effects of real ones ------------------------------------


def _clean_and_noisy(E: xr.DataArray, snr: float, **kw: object) -> tuple[np.ndarray, np.ndarray]:
    from xr_unmix.simulate import simulate_scene

    clean = simulate_scene(E, (48, 48), seed=4, snr_db=None, **kw).cube.values.astype(np.float64)
    noisy = simulate_scene(E, (48, 48), seed=4, snr_db=snr, **kw).cube.values.astype(np.float64)
    return clean, noisy


@pytest.mark.parametrize("snr", [20.0, 40.0])
def test_scene_snr_is_measured_within_half_a_db(E: xr.DataArray, snr: float) -> None:
    clean, noisy = _clean_and_noisy(E, snr, brightness=(0.5, 1.2), variability=0.05,
                                    nodata_fraction=0.1)
    ok = np.isfinite(noisy).all(0)
    measured = 10 * np.log10(np.mean(clean[:, ok] ** 2) / np.mean((noisy - clean)[:, ok] ** 2))
    assert abs(measured - snr) < 0.5


def test_scene_shapes_sum_to_one_and_spatial_structure(E: xr.DataArray) -> None:
    from xr_unmix.simulate import simulate_scene

    sc = simulate_scene(E, (40, 56), seed=1, snr_db=None)
    assert sc.cube.dims == ("band", "y", "x") and sc.cube.shape == (30, 40, 56)
    assert sc.abundances.dims == ("endmember", "y", "x") and sc.abundances.shape == (4, 40, 56)
    assert list(sc.abundances.endmember.values) == ["a", "b", "c", "d"]
    A = sc.abundances.values.astype(np.float64)
    assert (A >= 0).all()
    np.testing.assert_allclose(A.sum(0), 1.0, atol=1e-5)
    # no noise, no effects: exactly the linear mixture of E
    np.testing.assert_allclose(sc.cube.values, np.einsum("br,ryx->byx", E.values, A), rtol=1e-5, atol=1e-6)
    # spatially smooth: neighbours differ far less than random pixel pairs
    flat = A.reshape(4, -1)
    perm = np.random.default_rng(0).permutation(flat.shape[1])
    assert np.abs(np.diff(A, axis=2)).mean() < 0.3 * np.abs(flat - flat[:, perm]).mean()
    # near-pure pixels occur by default
    assert (A.max(0) > 0.9).mean() > 0.05


def test_scene_without_pure_pixels(E: xr.DataArray) -> None:
    from xr_unmix.simulate import simulate_scene

    A = simulate_scene(E, (48, 48), seed=2, max_abundance=0.7).abundances.values
    assert A.max() <= 0.7 + 1e-6
    assert A.max() > 0.69  # capped, not flattened
    np.testing.assert_allclose(A.sum(0), 1.0, atol=1e-5)
    assert (A >= 0).all()
    with pytest.raises(ValueError, match="max_abundance"):
        simulate_scene(E, (8, 8), max_abundance=0.25)


def test_scene_holes_are_nan_in_every_band(E: xr.DataArray) -> None:
    from xr_unmix.simulate import simulate_scene

    sc = simulate_scene(E, (64, 64), seed=3, nodata_fraction=0.08)
    Y = sc.cube.values
    hole = np.isnan(Y).any(0)
    assert (np.isnan(Y).all(0) == hole).all()  # a hole is NaN in every band, never in some
    assert 0.08 <= hole.mean() < 0.2
    assert np.isfinite(sc.abundances.values).all()  # the truth is kept at the holes
    with pytest.raises(ValueError, match="nodata_fraction"):
        simulate_scene(E, (8, 8), nodata_fraction=0.9)


def test_scene_brightness_scales_the_mixture(E: xr.DataArray) -> None:
    from xr_unmix.simulate import simulate_scene

    sc = simulate_scene(E, (48, 48), seed=5, snr_db=None, brightness=(0.6, 1.3))
    s = sc.brightness.values
    assert s.min() == pytest.approx(0.6) and s.max() == pytest.approx(1.3)
    assert np.abs(np.diff(s, axis=0)).max() < 0.1  # smooth (shade, topography), not per-pixel noise
    mix = np.einsum("br,ryx->byx", E.values, sc.abundances.values.astype(np.float64))
    np.testing.assert_allclose(sc.cube.values, s * mix, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="brightness"):
        simulate_scene(E, (8, 8), brightness=(1.2, 0.5))


def test_scene_variability_and_bundles(E: xr.DataArray) -> None:
    from xr_unmix.simulate import simulate_scene

    base = simulate_scene(E, (32, 32), seed=6, snr_db=None)
    var = simulate_scene(E, (32, 32), seed=6, snr_db=None, variability=0.1)
    rel = np.abs(var.cube.values - base.cube.values) / base.cube.values
    assert 0.01 < rel.mean() < 0.2  # perturbed, but the same materials
    # bundles: every pixel's spectrum is the mixture of the members it drew
    rng = np.random.default_rng(0)
    bundles = [E.values[:, [r]] * rng.uniform(0.8, 1.2, (1, 3)) for r in range(4)]
    sc = simulate_scene(E, (24, 24), seed=7, snr_db=None, bundles=bundles)
    m, A = sc.members, sc.abundances.values.astype(np.float64)
    assert m.shape == (4, 24, 24) and set(np.unique(m)) == {0, 1, 2}
    i, j = 5, 17
    expect = sum(A[r, i, j] * bundles[r][:, m[r, i, j]] for r in range(4))
    np.testing.assert_allclose(sc.cube.values[:, i, j], expect, rtol=1e-5)
    np.testing.assert_allclose(sc.endmembers.values, E.values)  # the reference spectra are E
    with pytest.raises(ValueError, match="bundles"):
        simulate_scene(E, (8, 8), bundles=bundles[:3])
