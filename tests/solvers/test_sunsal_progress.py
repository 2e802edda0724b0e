"""SUnSAL's progress bar over pixels (``sunsal_solve(progress=True)``, ``cube.unmix.sunsal(progress=...)``).

The bar is recorded by replacing :func:`xr_unmix._progress.progress_bar`; it must reach the pixel count
on every path (table polisher, active set, ADMM to ``max_iter``, ``tol=0``, NaN pixels), and the
answer must be bit for bit the one without a bar.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import xarray as xr

import xr_unmix  # noqa: F401  (the accessor)
from xr_unmix import _progress
from xr_unmix.errors import ConvergenceWarning
from xr_unmix.solvers.sunsal import sunsal_solve


class _Recorder:
    """Stands in for a tqdm bar: keeps ``total``, the updates and whether it was closed."""

    bars: list[_Recorder] = []

    def __init__(self, **kwargs: Any) -> None:
        self.total = kwargs["total"]
        self.updates: list[int] = []
        self.closed = False
        _Recorder.bars.append(self)

    def update(self, n: int = 1) -> None:
        assert not self.closed, "update after close"
        assert n >= 0, f"a bar goes backwards: update({n})"
        self.updates.append(int(n))

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def bars(monkeypatch: pytest.MonkeyPatch) -> list[_Recorder]:
    _Recorder.bars = []
    monkeypatch.setattr(_progress, "progress_bar", _Recorder)
    return _Recorder.bars


def _problem(R: int, n: int, seed: int = 0, bands: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    E = rng.uniform(0.05, 0.9, (bands, R))
    A = rng.dirichlet(np.full(R, 0.5), n).T
    Y = (E @ A + 0.01 * rng.normal(size=(bands, n))).astype(np.float32)
    return Y, E


CASES = {
    "fcls table polisher": dict(R=4, kw=dict(lam=0.0)),
    "active set (R=16, ANC)": dict(R=16, kw=dict(lam=1e-3, asc=False)),
    "admm to max_iter": dict(R=4, kw=dict(lam=0.0, polish=False, max_iter=20, tol=1e-12)),
    "tol=0": dict(R=4, kw=dict(lam=0.0, tol=0.0, max_iter=15)),
    "unconstrained": dict(R=3, kw=dict(lam=0.0, anc=False, asc=False)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bar_reaches_the_pixel_count_and_results_are_unchanged(bars: list[_Recorder], case: str) -> None:
    R, kw = CASES[case]["R"], CASES[case]["kw"]
    n = 70_000 + 13  # over one polish slice (65,536 px): several batches
    Y, E = _problem(R, n)
    Y[:, [5, 40_000]] = np.nan  # invalid pixels count as done too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = sunsal_solve(Y, E, **kw).numpy()
        assert bars == []
        shown = sunsal_solve(Y, E, progress=True, **kw).numpy()
    assert len(bars) == 1
    bar = bars[0]
    assert bar.total == n
    assert sum(bar.updates) == n
    assert bar.closed
    np.testing.assert_array_equal(shown, plain)
    assert np.isnan(shown[:, 5]).all() and np.isnan(shown[:, 40_000]).all()


def test_bar_advances_while_solving(bars: list[_Recorder]) -> None:
    # several updates (one per batch that certifies pixels), not one jump at the end
    Y, E = _problem(4, 3 * 65_536)
    sunsal_solve(Y, E, progress=True)
    assert len([u for u in bars[0].updates if u > 0]) >= 3


def test_accessor_shows_the_bar_for_a_numpy_cube(bars: list[_Recorder]) -> None:
    Y, E = _problem(4, 40 * 50)
    cube = xr.DataArray(Y.reshape(-1, 40, 50), dims=("band", "y", "x"))
    shown = cube.unmix.fcls(E, progress=True)
    assert [b.total for b in bars] == [2000] and sum(bars[0].updates) == 2000
    bars.clear()
    plain = cube.unmix.fcls(E, progress=False)
    assert bars == []
    xr.testing.assert_identical(shown, plain)


def test_accessor_default_is_no_bar_off_a_terminal(bars: list[_Recorder]) -> None:
    # pytest captures stderr: not a terminal, so the default (None) shows nothing
    Y, E = _problem(4, 100)
    xr.DataArray(Y.reshape(-1, 10, 10), dims=("band", "y", "x")).unmix.sunsal(E)
    assert bars == []


def test_dask_cube_has_no_per_chunk_bar(bars: list[_Recorder]) -> None:
    # a lazy cube shows its progress through the writers (over tasks), not one bar per chunk
    Y, E = _problem(4, 40 * 40)
    cube = xr.DataArray(Y.reshape(-1, 40, 40), dims=("band", "y", "x")).chunk({"y": 20, "x": 20})
    cube.unmix.fcls(E, progress=True).compute()
    assert bars == []


def test_real_tqdm_bar_writes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    Y, E = _problem(4, 500)
    sunsal_solve(Y, E, progress=True)
    err = capsys.readouterr().err
    assert "SUnSAL" in err and "px" in err
