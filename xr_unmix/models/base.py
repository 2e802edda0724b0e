"""The contract every xr_unmix network follows, and pickle-free save/load.

A model is a plain :class:`torch.nn.Module` that knows nothing of xarray or Dask. The tiling and the
accessor only use the small surface defined here:

- ``n_bands``, ``n_endmembers``, ``endmember_names``, ``wavelengths`` (nm or ``None``);
- ``halo``: the spatial receptive field in pixels (0 for pixel-wise models), used as the tile overlap;
- ``unmix_image(Y)``: ``(bands, H, W)`` tensor in, ``(endmembers, H, W)`` abundances out.

Files are one ``.safetensors`` file: the tensors, plus the JSON config stored in the safetensors header
metadata under the key ``"xr_unmix"``. Loading never unpickles anything, so opening a model cannot run code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import BandMismatchError, ModelFileError

FORMAT = "xr_unmix.model"
FORMAT_VERSION = 1
_REGISTRY: dict[str, type[UnmixModel]] = {}


def register_model(cls: type[UnmixModel]) -> type[UnmixModel]:
    """Class decorator: make ``cls`` loadable by :func:`load_model` under its class name."""
    _REGISTRY[cls.__name__] = cls
    return cls


class UnmixModel(torch.nn.Module):
    """Base class of the unmixing networks.

    Subclasses store everything needed to rebuild themselves in ``self.config`` (JSON-serialisable:
    numbers, strings, lists) and implement :meth:`_from_config`. Parameters and buffers go through
    ``state_dict`` into the safetensors file.
    """

    #: Pixel-wise models get their input as ``(n_pixels, bands)`` batches through :meth:`forward`.
    pixelwise: ClassVar[bool] = True

    def __init__(
        self,
        n_bands: int,
        n_endmembers: int,
        endmember_names: list[str] | None = None,
        wavelengths: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.n_bands = int(n_bands)
        self.n_endmembers = int(n_endmembers)
        names = list(endmember_names) if endmember_names is not None else [
            f"em{i}" for i in range(self.n_endmembers)
        ]
        if len(names) != self.n_endmembers:
            raise ValueError(f"{len(names)} endmember names for {self.n_endmembers} endmembers")
        self.endmember_names = [str(n) for n in names]
        self.wavelengths = None if wavelengths is None else [float(w) for w in wavelengths]
        if self.wavelengths is not None and len(self.wavelengths) != self.n_bands:
            raise ValueError(f"{len(self.wavelengths)} wavelengths for {self.n_bands} bands")
        self.config: dict[str, Any] = {}

    # -- the surface the tiling uses ---------------------------------------------------------------
    @property
    def halo(self) -> int:
        """Spatial receptive field in pixels: the overlap tiles need. 0 for pixel-wise models."""
        return 0

    def unmix_image(self, Y: torch.Tensor) -> torch.Tensor:
        """Unmix an image.

        Parameters
        ----------
        Y : Tensor, shape (bands, H, W)
            Reflectance; every pixel finite (the caller masks and fills invalid pixels).

        Returns
        -------
        Tensor, shape (endmembers, H, W)
        """
        if not self.pixelwise:
            raise NotImplementedError(f"{type(self).__name__} must implement unmix_image")
        b, h, w = Y.shape
        self.check_bands(b)
        out = self(Y.reshape(b, h * w).T)
        return out.T.reshape(self.n_endmembers, h, w)

    def check_bands(self, n_bands: int) -> None:
        """Raise :class:`BandMismatchError` if ``n_bands`` differs from the model's band count."""
        if int(n_bands) != self.n_bands:
            raise BandMismatchError(
                f"the model expects {self.n_bands} bands but the cube has {n_bands}; "
                "resample the cube or train a model for its bands"
            )

    @property
    def endmembers(self) -> Any:
        """The model's endmembers as a DataArray ``(band, endmember)`` (refined ones if learnt)."""
        import xarray as xr

        E = self.endmember_matrix().detach().cpu().numpy()
        coords: dict[str, Any] = {"band": np.arange(1, self.n_bands + 1),
                                  "endmember": np.array(self.endmember_names, dtype=object)}
        if self.wavelengths is not None:
            coords["wavelength"] = ("band", np.asarray(self.wavelengths))
        return xr.DataArray(E, dims=("band", "endmember"), coords=coords, name="endmembers")

    def endmember_matrix(self) -> torch.Tensor:
        """The endmember matrix ``(bands, endmembers)`` the model uses."""
        raise NotImplementedError

    # -- persistence --------------------------------------------------------------------------------
    def _base_config(self) -> dict[str, Any]:
        return {
            "n_bands": self.n_bands,
            "n_endmembers": self.n_endmembers,
            "endmember_names": self.endmember_names,
            "wavelengths": self.wavelengths,
        }

    @classmethod
    def _from_config(cls, config: dict[str, Any]) -> UnmixModel:
        """Build an instance (weights not loaded yet) from ``config``."""
        return cls(**config)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model to ``path`` (a ``.safetensors`` file), atomically.

        Returns the path written.
        """
        from safetensors.torch import save_file

        from .. import __version__

        path = Path(path)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "class": type(self).__name__,
            "xr_unmix_version": __version__,
            "config": {**self._base_config(), **self.config},
        }
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            save_file(tensors, str(tmp), metadata={"xr_unmix": json.dumps(meta)})
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path


def load_model(path: str | os.PathLike[str], *, map_location: str = "cpu") -> UnmixModel:
    """Load a model written by :meth:`UnmixModel.save`, without unpickling anything.

    Raises
    ------
    ModelFileError
        The file is missing, not a safetensors file, truncated, not written by xr_unmix, of an unknown
        model class, or its tensors do not match the config.
    """
    from safetensors import SafetensorError, safe_open

    from . import _load_all  # noqa: F401  (registers every model class)

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no model file at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path} is not a readable safetensors model file: {exc}") from exc
    try:
        meta = json.loads(header["xr_unmix"])
        if meta.get("format") != FORMAT:
            raise KeyError("format")
        cls_name = meta["class"]
        config = dict(meta["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # JSONDecodeError is a ValueError
        raise ModelFileError(f"{path} is a safetensors file but not an xr_unmix model") from exc
    try:
        version = int(meta.get("format_version", 0))
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: format_version {meta.get('format_version')!r} is not a "
                             "number (tampered file?)") from exc
    if version > FORMAT_VERSION:
        raise ModelFileError(f"{path} uses model format {meta['format_version']}; "
                             f"this xr_unmix reads up to {FORMAT_VERSION}: upgrade xr_unmix")
    cls = _REGISTRY.get(cls_name)
    if cls is None:
        raise ModelFileError(f"{path} holds an unknown model class {cls_name!r}; "
                             f"known: {sorted(_REGISTRY)}")
    check_tensors(path, cls, config, tensors)
    try:
        model = cls._from_config(config)
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{path}: tensors do not match the {cls_name} config: {exc}") from exc
    model.eval()
    return model.to(map_location)


def check_tensors(path: Path, cls: type[UnmixModel], config: dict[str, Any],
                  tensors: dict[str, torch.Tensor]) -> None:
    """Check a model file's config against its tensors before anything is allocated.

    The model is first built on torch's ``meta`` device (shapes only, no memory, no initialisation),
    so that a config that does not fit the tensors -- e.g. a tampered ``hidden=6000`` that would
    allocate gigabytes -- or one outside the class's bounds fails at once. Every floating-point
    tensor must be finite: NaN weights would give NaN (or, once normalised, uniform) abundances.

    Raises
    ------
    ModelFileError
        Naming the file and the first tensors or settings at fault.
    """
    name = cls.__name__
    try:
        with torch.device("meta"):
            skeleton = cls._from_config(config)
    except (RuntimeError, TypeError, ValueError, KeyError, NotImplementedError) as exc:
        raise ModelFileError(f"{path}: invalid {name} config ({' '.join(str(exc).split())}); "
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
        raise ModelFileError(f"{path}: its {name} config does not fit its tensors (a damaged or "
                             f"tampered file): {'; '.join(diffs[:3])} (config: {settings})")
    for k, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n = int((~torch.isfinite(t)).sum())
            raise ModelFileError(f"{path}: tensor {k!r} holds {n} NaN/inf values (a damaged or "
                                 "tampered file); retrain or restore the model")
