"""Shared set-up of the DEQ-Unmix recipes: threads, Jasper Ridge, VCA endmembers, output folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

FIG_DIR = Path(__file__).resolve().parent.parent / "docs" / "figures"


def setup(threads: int = 1) -> None:
    """One intra-op thread: on a small, shared CPU, thread synchronisation costs more than it gains."""
    torch.set_num_threads(int(os.environ.get("XR_UNMIX_RECIPE_THREADS", threads)))
    FIG_DIR.mkdir(parents=True, exist_ok=True)


def jasper(seed: int = 0):
    """Jasper Ridge cube (bands, H, W) float32, reference E (bands, 4), reference A (4, H, W), the
    cube DataArray, and VCA endmembers (clipped >= 0) for ``seed``."""
    from xr_unmix.datasets import load_jasper_ridge
    from xr_unmix.extraction import vca

    cube, E_ref, A_ref = load_jasper_ridge()
    Y = cube.values.astype(np.float32)
    E_vca, _ = vca(Y.reshape(Y.shape[0], -1), 4, seed=seed)
    return Y, E_ref.values, A_ref.values, cube, np.clip(E_vca, 0, None)
