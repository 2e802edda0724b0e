import numpy as np
import pytest

from xr_unmix.testing import make_cube, make_endmembers


@pytest.fixture
def scene(request):
    """(cube, endmembers, truth) from :func:`xr_unmix.testing.make_cube`.

    Default: 24x32 px, 30 bands, 3 endmembers, noise-free, EPSG:32633. Another shape through
    indirect parametrisation, ``@pytest.mark.parametrize("scene", [{"ny": 24, "nx": 28,
    "n_bands": 20, "snr_db": 30, "seed": 2}], indirect=True)``: ``n_bands``, ``n_endmembers`` and
    ``em_seed`` build the endmembers (:func:`~xr_unmix.testing.make_endmembers`), the other keys go
    to ``make_cube``.
    """
    kw = dict(getattr(request, "param", {}))
    em = {k: kw.pop(k) for k in ("n_bands", "n_endmembers") if k in kw}
    if em or "em_seed" in kw:
        kw["endmembers"] = make_endmembers(**em, seed=kw.pop("em_seed", 0))
    return make_cube(**kw)


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: tiny tensors run faster so, and a busy shared machine can't slow them.

    Use per module with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
