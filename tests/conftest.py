import numpy as np
import pytest

from xr_unmix.testing import make_cube


@pytest.fixture
def scene():
    """(cube, endmembers, truth): 24x32 px, 30 bands, 3 endmembers, noise-free, EPSG:32633."""
    return make_cube()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
