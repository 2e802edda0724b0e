"""Thread pools inside the solvers: the caller's torch modes reach them (DEQ's FCLS warm start)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

import xr_unmix
from xr_unmix.models.deq import DEQUnmix
from xr_unmix.runtime import torch_thread_limit
from xr_unmix.solvers.sunsal import fcls, sunsal_solve
from xr_unmix.testing import make_cube


@pytest.fixture
def two_torch_threads() -> Iterator[None]:
    with torch_thread_limit(2):  # sunsal_solve then runs its pixel batches on a pool of 2 threads
        yield


def test_deq_on_numpy_cube_over_65536_px_with_two_torch_threads(two_torch_threads) -> None:
    # was: "Inplace update to inference tensor outside InferenceMode" from the FCLS start's pool
    cube, E, A = make_cube(260, 256, seed=4)  # 66,560 px > 65,536 (one phase-0 polish slice)
    model = DEQUnmix.from_endmembers(E, seed=0)
    ab = cube.unmix.deq(model).compute()
    assert ab.shape == A.shape
    s = ab.sum("endmember").values
    np.testing.assert_allclose(s, 1.0, atol=1e-4)
    assert float(ab.min()) >= 0


def test_polisher_built_in_inference_mode_serves_later_calls(two_torch_threads) -> None:
    rng = np.random.default_rng(0)
    E = rng.random((30, 4)) + 0.1  # a problem no other test uses: its polisher is built here
    Atrue = rng.dirichlet(np.ones(4), 70_000).T
    Y = (E @ Atrue).astype(np.float32)
    with torch.inference_mode():
        a1 = fcls(Y, E)
    a2 = sunsal_solve(Y, E, lam=0.0)  # the same cached polisher, outside inference mode
    np.testing.assert_allclose(a1.numpy(), Atrue, atol=2e-3)
    np.testing.assert_array_equal(a1.numpy(), a2.numpy())


def test_torch_thread_limit_restores_the_count() -> None:
    before = torch.get_num_threads()
    with torch_thread_limit(3):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == before
