"""Exceptions raised by xr_unmix.

Every class derives from :class:`ValueError` (or :class:`RuntimeError`) so that code written against the
plain built-ins keeps working; the subclasses let callers tell the failure apart.
"""

from __future__ import annotations


class XrUnmixError(Exception):
    """Base class of every xr_unmix error."""


class BandMismatchError(XrUnmixError, ValueError):
    """The cube and the endmembers (or a model) disagree on the number of bands."""


class DimensionError(XrUnmixError, ValueError):
    """A DataArray lacks the dimensions an operation needs."""


class MissingCRSError(XrUnmixError, ValueError):
    """A CRS is needed (e.g. to write a georeferenced file) but the data has none."""


class ModelFileError(XrUnmixError, ValueError):
    """A model file is missing, truncated, tampered with or not an xr_unmix model."""


class ConvergenceWarning(UserWarning):
    """An iterative solve stopped at its iteration limit before reaching its tolerance."""
