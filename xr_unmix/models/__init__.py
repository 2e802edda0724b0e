"""Unmixing networks: plain ``torch.nn.Module`` subclasses that know nothing of xarray.

Importing this package imports every built-in model module, so that their classes are registered in
:mod:`xr_unmix.models.registry` (the only way a model becomes bytes and back) before any file or worker
payload is read.
"""

from . import deq, mnnae, uadmm  # noqa: F401  (each registers its classes)
from .base import TileSpec, UnmixModel
from .registry import load_model, model_from_bytes, model_to_bytes, register_model, save_model

__all__ = ["TileSpec", "UnmixModel", "load_model", "model_from_bytes", "model_to_bytes",
           "register_model", "save_model"]
