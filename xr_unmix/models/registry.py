"""The one way a model becomes bytes and back: model files and dask-worker payloads alike.

A model is serialised as one safetensors blob: its tensors (``state_dict``) plus a JSON header stored in
the safetensors metadata under the key ``"xr_unmix"``::

    {"format": "xr_unmix.model", "format_version": 1, "class": "DEQUnmix",
     "xr_unmix_version": "...", "config": {...}}

:func:`model_to_bytes` writes it, :func:`model_from_bytes` reads it back; :func:`save_model` /
:func:`load_model` are the same for files (atomic write, :func:`xr_unmix.io.atomic.write_bytes`), and
:mod:`xr_unmix._workers` ships the very same bytes to dask workers (with their SHA-256). Reading never
deserialises code: the class is looked up by name in this module's table, which the model classes fill
with :func:`register_model` (the package ``xr_unmix.models`` imports every built-in model module, so the
table is complete whenever this module is importable). A config is first checked on torch's ``meta``
device against the tensors' shapes (:func:`check_tensors`), so a tampered config cannot allocate
gigabytes, and every floating-point tensor must be finite.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ModelFileError

if TYPE_CHECKING:
    from .base import UnmixModel

FORMAT = "xr_unmix.model"
FORMAT_VERSION = 1
#: the largest safetensors header (JSON) read; a larger length field is a damaged or foreign file
MAX_HEADER_BYTES = 16 * 2**20
_REGISTRY: dict[str, type[UnmixModel]] = {}


def register_model(cls: type[UnmixModel]) -> type[UnmixModel]:
    """Class decorator: make ``cls`` loadable under its class name (files and worker payloads)."""
    _REGISTRY[cls.__name__] = cls
    return cls


def registered() -> dict[str, type[UnmixModel]]:
    """A copy of the table ``{class name: class}`` of the loadable model classes."""
    return dict(_REGISTRY)


def model_to_bytes(model: UnmixModel) -> bytes:
    """Serialise ``model`` (a registered :class:`~xr_unmix.models.base.UnmixModel`) to safetensors bytes.

    Raises
    ------
    TypeError
        ``model`` is not an instance of a registered model class (any other ``torch.nn.Module`` has no
        safe representation: xr_unmix never serialises code).
    """
    from safetensors.torch import save

    from .. import __version__

    cls = type(model)
    if _REGISTRY.get(cls.__name__) is not cls:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} is not a registered xr_unmix model "
                        "class (decorate it with xr_unmix.models.register_model); other modules "
                        "cannot be saved or sent to workers: xr_unmix never serialises code")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "class": cls.__name__,
            "xr_unmix_version": __version__, "config": {**model._base_config(), **model.config}}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save(tensors, metadata={"xr_unmix": json.dumps(meta, sort_keys=True)})


def digest(data: bytes) -> str:
    """SHA-256 hex digest of serialised model bytes."""
    return hashlib.sha256(data).hexdigest()


def _header(data: bytes, source: str) -> dict[str, Any]:
    """The safetensors JSON header of ``data``, its length field bounded."""
    if len(data) < 8:
        raise ModelFileError(f"{source} is not a readable safetensors model file: "
                             f"{len(data)} bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(MAX_HEADER_BYTES, len(data) - 8):
        raise ModelFileError(f"{source} is not a readable safetensors model file: header length "
                             f"{n} does not fit its {len(data)} bytes")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(f"{source} is not a readable safetensors model file: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelFileError(f"{source} is not a readable safetensors model file")
    return header


def _meta(header: dict[str, Any], source: str) -> tuple[str, dict[str, Any]]:
    """``(class name, config)`` from the header's ``xr_unmix`` metadata, format checked."""
    try:
        meta = json.loads(header["__metadata__"]["xr_unmix"])
        if meta.get("format") != FORMAT:
            raise KeyError("format")
        cls_name = meta["class"]
        config = dict(meta["config"])
        if not isinstance(cls_name, str):
            raise TypeError("class")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # JSONDecodeError is a ValueError
        raise ModelFileError(f"{source} is a safetensors file but not an xr_unmix model") from exc
    try:
        version = int(meta.get("format_version", 0))
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{source}: format_version {meta.get('format_version')!r} is not a "
                             "number (tampered file?)") from exc
    if version > FORMAT_VERSION:
        raise ModelFileError(f"{source} uses model format {meta['format_version']}; "
                             f"this xr_unmix reads up to {FORMAT_VERSION}: upgrade xr_unmix")
    return cls_name, config


def model_from_bytes(data: bytes, *, source: str = "model bytes",
                     map_location: str = "cpu") -> UnmixModel:
    """Rebuild a model from :func:`model_to_bytes` output, without deserialising any code.

    Parameters
    ----------
    data : bytes
        A safetensors blob written by :func:`model_to_bytes` (a model file's content).
    source : str
        What ``data`` is, for error messages (a path, ``"worker payload"``).
    map_location : str
        Device of the returned model.

    Raises
    ------
    ModelFileError
        Not safetensors, truncated, not written by xr_unmix, a newer format, an unknown class, a config
        outside the class's bounds or that does not fit the tensors, or non-finite weights.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    cls_name, config = _meta(_header(bytes(data[:8 + MAX_HEADER_BYTES]), source), source)
    try:
        tensors = load(bytes(data))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{source} is not a readable safetensors model file: {exc}") from exc
    cls = _REGISTRY.get(cls_name)
    if cls is None:
        raise ModelFileError(f"{source} holds an unknown model class {cls_name!r}; "
                             f"known: {sorted(_REGISTRY)}")
    check_tensors(source, cls, config, tensors)
    try:
        model = cls._from_config(config)
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{source}: tensors do not match the {cls_name} config: {exc}") from exc
    model.eval()
    return model.to(map_location)


def save_model(model: UnmixModel, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``path`` (a ``.safetensors`` file) atomically; returns the path."""
    from ..io.atomic import write_bytes

    return write_bytes(path, model_to_bytes(model), overwrite=True)


def load_model(path: str | os.PathLike[str], *, map_location: str = "cpu") -> UnmixModel:
    """Load a model written by :meth:`UnmixModel.save <xr_unmix.models.base.UnmixModel.save>`.

    Nothing is deserialised but tensors and JSON, so opening a model cannot run code.

    Raises
    ------
    ModelFileError
        The file is missing or unreadable, or :func:`model_from_bytes` refuses its content.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no model file at {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{path} is not a readable safetensors model file: {exc}") from exc
    return model_from_bytes(data, source=str(path), map_location=map_location)


def check_tensors(source: str | os.PathLike[str], cls: type[UnmixModel], config: dict[str, Any],
                  tensors: dict[str, torch.Tensor]) -> None:
    """Check a model's config against its tensors before anything is allocated.

    The model is first built on torch's ``meta`` device (shapes only, no memory, no initialisation),
    so that a config that does not fit the tensors -- e.g. a tampered ``hidden=6000`` that would
    allocate gigabytes -- or one outside the class's bounds fails at once. Every floating-point
    tensor must be finite: NaN weights would give NaN (or, once normalised, uniform) abundances.

    Raises
    ------
    ModelFileError
        Naming the source and the first tensors or settings at fault.
    """
    name = cls.__name__
    try:
        with torch.device("meta"):
            skeleton = cls._from_config(config)
    except ModelFileError as exc:  # the class's own refusal (e.g. a removed option) says why
        raise ModelFileError(f"{source}: {exc}") from exc
    except (RuntimeError, TypeError, ValueError, KeyError, NotImplementedError) as exc:
        raise ModelFileError(f"{source}: invalid {name} config ({' '.join(str(exc).split())}); "
                             "a damaged or tampered file") from exc
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in tensors.items()}
    if want != have:
        diffs = [f"{k} is {list(have[k])} in the file but {list(want[k])} by its config"
                 for k in want if k in have and have[k] != want[k]]
        diffs += [f"{k} is missing" for k in want if k not in have]
        diffs += [f"{k} is not part of a {name}" for k in have if k not in want]
        settings = ", ".join(f"{k}={v}" for k, v in config.items()
                             if isinstance(v, int) and not isinstance(v, bool))
        raise ModelFileError(f"{source}: its {name} config does not fit its tensors (a damaged or "
                             f"tampered file): {'; '.join(diffs[:3])} (config: {settings})")
    for k, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n = int((~torch.isfinite(t)).sum())
            raise ModelFileError(f"{source}: tensor {k!r} holds {n} NaN/inf values (a damaged or "
                                 "tampered file); retrain or restore the model")
