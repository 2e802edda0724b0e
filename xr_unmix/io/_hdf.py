"""What the HDF5 readers (EMIT, its MASK, PRISMA) share: the h5netcdf engine, or a clear error."""

from __future__ import annotations

from ..errors import InputError


def h5netcdf_engine() -> str:
    """``"h5netcdf"``, the xarray engine the HDF5 readers use; :class:`InputError` naming the extra
    to install when it is missing."""
    try:
        import h5netcdf  # noqa: F401
        import h5py  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the 'products' extra
        raise InputError("reading EMIT/PRISMA HDF5 products needs h5netcdf and h5py: "
                         "pip install 'xr-unmix[products]'") from exc
    return "h5netcdf"
