"""The contract every xr_unmix network follows.

A model is a plain :class:`torch.nn.Module` that knows nothing of xarray or Dask. The tiling and the
accessor only use the small surface defined here:

- ``n_bands``, ``n_endmembers``, ``endmember_names``, ``wavelengths`` (nm or ``None``);
- ``tile_spec``: a :class:`~xr_unmix.tiling.TileSpec` (halo, blending, pixel-wise, NaN handling), the
  model's whole contract with :func:`xr_unmix.tiling.map_tiles`;
- ``unmix_image(Y)``: ``(bands, H, W)`` tensor in, ``(endmembers, H, W)`` abundances out;
- ``solve_stats`` / ``reset_solve_stats()``: counters of inner solves (empty for models without any).

Files and worker payloads go through :mod:`xr_unmix.models.registry` (safetensors + JSON config).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import BandMismatchError, ConvergenceWarning
from ..tiling import TileSpec
from .registry import load_model, register_model, save_model

__all__ = ["SolveCounter", "TileSpec", "UnmixModel", "collect_solves", "load_model", "note_solve", "register_model"]

_SOLVES = threading.local()


@contextlib.contextmanager
def collect_solves() -> Iterator[list[dict[str, Any]]]:
    """Collect the records of the inner solves run by this thread inside the block (a list of
    ``{"converged", "residual", "iterations", "tol"}``; models call :func:`note_solve`)."""
    prev = getattr(_SOLVES, "records", None)
    records: list[dict[str, Any]] = []
    _SOLVES.records = records
    try:
        yield records
    finally:
        _SOLVES.records = prev


def note_solve(record: dict[str, Any]) -> None:
    """Hand one solve record to the innermost :func:`collect_solves` of this thread, if any."""
    records = getattr(_SOLVES, "records", None)
    if records is not None:
        records.append(record)


class UnmixModel(torch.nn.Module):
    """Base class of the unmixing networks.

    Subclasses store everything needed to rebuild themselves in ``self.config`` (JSON-serialisable:
    numbers, strings, lists) and implement :meth:`_from_config`. Parameters and buffers go through
    ``state_dict`` into the safetensors file.
    """

    #: Keys of :attr:`solve_stats` that :func:`xr_unmix.apply_model` reports in a result's attrs.
    SOLVE_STAT_KEYS: ClassVar[tuple[str, ...]] = ("n_solves", "n_unconverged", "max_residual",
                                                  "max_iterations")

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
    def tile_spec(self) -> TileSpec:
        """How tiles of this model are cut and stitched; pixel-wise models: ``TileSpec()`` (no halo).

        Spatial models override it (e.g. :class:`~xr_unmix.DEQUnmix`: its halo, blended).
        """
        return TileSpec()

    @property
    def halo(self) -> int:
        """Tile overlap in pixels (``tile_spec.halo``): 0 for pixel-wise models."""
        return self.tile_spec.halo

    @property
    def solve_stats(self) -> dict[str, Any]:
        """Counters of the inner solves since :meth:`reset_solve_stats` (``{}``: the model has none)."""
        return {}

    def reset_solve_stats(self) -> None:
        """Clear :attr:`solve_stats` (nothing to clear for models without inner solves)."""

    def record_solve(self, rec: dict[str, Any], *, warn: bool = True) -> None:
        """Count one inner solve (models without inner solves have none to count)."""

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
        if not self.tile_spec.pixelwise:  # pixel-wise models get (n_pixels, bands) through forward
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
        """Write the model to ``path`` (a ``.safetensors`` file), atomically; returns the path.

        See :func:`xr_unmix.models.registry.save_model`.
        """
        return save_model(self, path)


class SolveCounter:
    """Mixin for models with inner (fixed-point) solves: thread-safe :attr:`solve_stats`, warnings.

    Put it before :class:`UnmixModel` in the bases and call :meth:`reset_solve_stats` in ``__init__``.
    """

    @property
    def solve_stats(self) -> dict[str, Any]:
        """``n_solves``, ``n_unconverged``, ``max_residual``, ``max_iterations`` of the forward solves
        since :meth:`reset_solve_stats` (this process)."""
        return self._solve_stats

    def reset_solve_stats(self) -> None:
        """Clear :attr:`solve_stats`."""
        if not hasattr(self, "_lock"):
            self._lock = threading.Lock()
        with self._lock:
            self._solve_stats: dict[str, Any] = {"n_solves": 0, "n_unconverged": 0,
                                                "max_residual": 0.0, "max_iterations": 0}

    def record_solve(self, rec: dict[str, Any], *, warn: bool = True) -> None:
        """Count one forward solve ``{"converged", "residual", "iterations", "tol"}`` in
        :attr:`solve_stats`, and warn (:class:`~xr_unmix.errors.ConvergenceWarning`) if it did not
        converge. Also called with the records of solves run on ``distributed`` workers
        (:mod:`xr_unmix._workers`), so that they reach the caller's model as local ones do."""
        note_solve(rec)
        with self._lock:
            s = self._solve_stats
            s["n_solves"] += 1
            s["n_unconverged"] += int(not rec["converged"])
            s["max_residual"] = max(float(s["max_residual"]), rec["residual"])
            s["max_iterations"] = max(int(s["max_iterations"]), rec["iterations"])
        if warn and not rec["converged"]:
            from .._warn import user_stacklevel

            warnings.warn(
                f"{type(self).__name__}: the fixed-point solve stopped after {rec['iterations']} iterations with "
                f"relative residual {rec['residual']:.3g} > tol={rec['tol']:g}; raise max_iter or "
                "loosen tol", ConvergenceWarning, stacklevel=user_stacklevel(),
            )

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy (keep-best states): the lock is dropped
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
