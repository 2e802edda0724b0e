"""Metrics: abundance RMSE, SAD, reconstruction error and Hungarian matching."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xr_unmix.metrics import match, reconstruction_rmse, rmse, sad


@pytest.fixture
def spectra() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(0.05, 1.0, size=(40, 4))


def test_rmse_and_sad_basics(spectra):
    a = np.zeros((3, 4, 5))
    b = np.full((3, 4, 5), 0.1)
    assert rmse(a, b) == pytest.approx(0.1)
    b[:, 0, 0] = np.nan  # NaN pixels skipped
    assert rmse(a, b) == pytest.approx(0.1)
    assert sad(spectra[:, 0], 3 * spectra[:, 0]) == pytest.approx(0.0, abs=1e-7)
    assert sad(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(np.pi / 2)


def test_reconstruction_rmse_zero_for_exact_model(spectra):
    A = np.random.default_rng(1).dirichlet(np.ones(4), size=30).T
    Y = spectra @ A
    assert reconstruction_rmse(Y, spectra, A) == pytest.approx(0.0, abs=1e-12)


def test_match_recovers_a_permutation_despite_scale_and_noise(spectra):
    perm = [2, 0, 3, 1]
    rng = np.random.default_rng(2)
    est = spectra[:, perm] * np.array([2.0, 0.5, 1.0, 3.0]) + rng.normal(0, 1e-3, (40, 4))
    m = match(est, spectra)
    # reference j is estimated column perm.index(j)
    np.testing.assert_array_equal(m.permutation, [perm.index(j) for j in range(4)])
    assert (m.sad < 0.01).all() and m.mean_sad == pytest.approx(m.sad.mean())
    np.testing.assert_allclose(m.sad, sad(est[:, m.permutation], spectra))
    assert m.angles.shape == (4, 4)


def test_match_is_globally_optimal_not_greedy():
    # spectra as directions in a plane: ref0 at 0 rad, ref1 at 0.5; est0 at 0.3, est1 at -0.35.
    # Greedy from ref0 takes est0 (0.30) and leaves ref1 with est1 (0.85): total 1.15.
    # The optimal pairing is ref0-est1 (0.35) + ref1-est0 (0.20): total 0.55.
    theta_ref, theta_est = np.array([0.0, 0.5]), np.array([0.3, -0.35])
    ref = np.vstack([np.cos(theta_ref), np.sin(theta_ref)])
    est = np.vstack([np.cos(theta_est), np.sin(theta_est)])
    m = match(est, ref)
    np.testing.assert_array_equal(m.permutation, [1, 0])
    np.testing.assert_allclose(m.sad, [0.35, 0.20], atol=1e-12)


def test_reorder_abundances_dataarray_and_array(spectra):
    est_names = ["vca0", "vca1", "vca2", "vca3"]
    ref_names = ["tree", "water", "soil", "road"]
    perm = [3, 1, 0, 2]
    E_est = xr.DataArray(spectra[:, perm], dims=("band", "endmember"), coords={"endmember": est_names})
    E_ref = xr.DataArray(spectra, dims=("band", "endmember"), coords={"endmember": ref_names})
    A_ref = np.random.default_rng(3).dirichlet(np.ones(4), size=(6, 7)).transpose(2, 0, 1)
    A_est = xr.DataArray(A_ref[perm], dims=("endmember", "y", "x"), coords={"endmember": est_names})
    m = match(E_est, E_ref)
    assert m.reference_names == tuple(ref_names) and m.estimated_names == tuple(est_names)
    A_back = m.reorder_abundances(A_est)
    assert list(A_back.endmember.values) == ref_names
    np.testing.assert_array_equal(A_back.values, A_ref)
    np.testing.assert_array_equal(m.reorder_abundances(A_est.values), A_ref)
    E_back = m.reorder_endmembers(E_est)
    np.testing.assert_array_equal(E_back.values, spectra)
    assert list(E_back.estimated_name.values) == [est_names[perm.index(j)] for j in range(4)]
    d = m.to_dict()
    assert d["pairs"]["tree"][0] == est_names[perm.index(0)]


def test_match_rectangular(spectra):
    more = np.hstack([spectra[:, [1, 0, 2, 3]], np.ones((40, 1))])  # 5 estimated, 4 reference
    m = match(more, spectra)
    np.testing.assert_array_equal(m.permutation, [1, 0, 2, 3])
    fewer = spectra[:, [2, 0]]  # 2 estimated, 4 reference
    m2 = match(fewer, spectra)
    assert m2.permutation[0] == 1 and m2.permutation[2] == 0
    assert (m2.permutation[[1, 3]] == -1).all() and np.isnan(m2.sad[[1, 3]]).all()
    assert m2.mean_sad == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="no estimated partner"):
        m2.reorder_abundances(np.zeros((2, 3, 3)))


def test_match_band_mismatch(spectra):
    with pytest.raises(ValueError, match="30 bands but reference has 40"):
        match(spectra[:30], spectra)
