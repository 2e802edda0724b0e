"""Exceptions raised by xr_unmix.

Every class derives from :class:`XrUnmixError` and from the built-in a caller would expect
(:class:`ValueError`, :class:`TypeError`, :class:`FileExistsError`, :class:`OSError`, ...), so that code
written against the plain built-ins keeps working; the subclasses let callers tell the failure apart.
The command line prints any :class:`XrUnmixError` as one line and exits with status 2 (a user error);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


class XrUnmixError(Exception):
    """Base class of every xr_unmix error: a problem with the input, the parameters or the machine.

    ``param`` names the parameter at fault when there is one (the command line shows its flag).
    """

    param: str | None = None

    def about(self, param: str) -> XrUnmixError:
        """Set :attr:`param` and return the error (``raise ParameterError(...).about("lam")``)."""
        self.param = param
        return self


class BandMismatchError(XrUnmixError, ValueError):
    """The cube and the endmembers (or a model) disagree on the number of bands."""


class WavelengthMismatchError(BandMismatchError):
    """The cube and the endmembers both carry wavelengths, and these disagree (see ``resample_spectra``)."""


class DimensionError(XrUnmixError, ValueError):
    """A DataArray lacks the dimensions an operation needs, or one of them is empty."""


class MissingCRSError(XrUnmixError, ValueError):
    """A CRS is needed (e.g. to write a georeferenced file) but the data has none."""


class ModelFileError(XrUnmixError, ValueError):
    """A model file is missing, truncated, tampered with or not an xr_unmix model."""


class InputTypeError(XrUnmixError, TypeError):
    """An argument of the wrong kind: a Dataset for a DataArray, a bool or complex cube, a model of
    another class than the method needs."""


class InputError(XrUnmixError, ValueError):
    """An input that cannot be used as given: unknown chunk sizes, an unreadable spectra file, ..."""


class MissingInputError(XrUnmixError, FileNotFoundError):
    """An input file (scene, endmembers, model) does not exist."""


class ParameterError(XrUnmixError, ValueError):
    """A parameter outside its range (a negative ``lam``, ``batch_size=0``, an unknown method, ...)."""


class OutputExistsError(XrUnmixError, FileExistsError):
    """The output path exists and ``overwrite`` was not given (or another writer created it meanwhile)."""

    def __init__(self, path: str | os.PathLike[str], message: str | None = None) -> None:
        self.path = os.fspath(path)
        super().__init__(message or f"{self.path} exists; pass overwrite=True to replace it")


class OutputError(XrUnmixError, OSError):
    """An output cannot be written: the path holds something that is not this product (never replaced),
    the directory is read-only, the disk is full, ... The message names the path."""


class SchedulerError(XrUnmixError, OSError):
    """The Dask scheduler cannot be reached or started (bounded: never waits without a limit)."""


class DeviceError(XrUnmixError, RuntimeError):
    """The requested device (e.g. ``"cuda"``) is not available where the computation runs."""


class ConvergenceWarning(UserWarning):
    """An iterative solve stopped at its iteration limit before reaching its tolerance."""


class TrainingWarning(UserWarning):
    """Training stopped early (diverged; the best state was restored) or did not improve on its start."""
