"""Unmixing networks: plain ``torch.nn.Module`` subclasses that know nothing of xarray."""

from .base import UnmixModel, load_model, register_model

__all__ = ["UnmixModel", "load_model", "register_model"]
