"""Input paths as GDAL and fsspec spell them: local files, ``NETCDF:file:var``, ``/vsicurl/...``,
``s3://...``.

A local path is checked on disk. Any other spelling is handed to GDAL (through rasterio, which also
turns ``s3://``, ``gs://``, ``az://``, ``http(s)://`` and ``zip://`` URLs into GDAL's ``/vsi*``
paths) and probed once, with a bounded network timeout, so that a path GDAL cannot open fails at
once with GDAL's own reason in one line.
"""

from __future__ import annotations

import os
import re

from ..errors import InputError, MissingInputError

PathLike = str | os.PathLike[str]

#: ``DRIVER:...`` subdataset syntax (``NETCDF:``, ``HDF5:``, ``ZARR:``, ``GTIFF_DIR:``, ...)
_DRIVER_PREFIX = re.compile(r"^[A-Z][A-Z0-9_]+:")
#: seconds a network probe may take (GDAL_HTTP_TIMEOUT, GDAL_HTTP_CONNECTTIMEOUT) unless set
PROBE_TIMEOUT_S = 30


def is_local_path(path: PathLike) -> bool:
    """False for a GDAL virtual path (``/vsi...``), a ``DRIVER:`` subdataset or a URL (``scheme://``).

    ``file://`` URLs are remote spellings too (GDAL opens them); a Windows drive (``C:\\``) is local.
    """
    s = os.fspath(path)
    return not (s.startswith("/vsi") or "://" in s or bool(_DRIVER_PREFIX.match(s)))


def check_raster_path(path: PathLike, what: str = "scene") -> str:
    """The path as a string GDAL opens; a clear one-line error if it cannot be opened.

    Parameters
    ----------
    path : str or path
        A local file, or anything GDAL / rasterio open: ``NETCDF:"f.nc":reflectance``,
        ``/vsizip/scenes.zip/a.tif``, ``/vsicurl/https://host/a.tif``, ``s3://bucket/a.tif``.
    what : str
        What the path is, for the message.

    Raises
    ------
    MissingInputError
        A local path that is not a file.
    InputError
        A GDAL / URL path that GDAL cannot open (GDAL's reason quoted).
    """
    s = os.fspath(path)
    if is_local_path(s):
        if not os.path.isfile(s):
            hint = " (a folder: give the raster file inside it)" if os.path.isdir(s) else ""
            raise MissingInputError(f"no such {what} file: {s}{hint}")
        return s
    import rasterio

    env = {k: os.environ.get(k, str(PROBE_TIMEOUT_S))
           for k in ("GDAL_HTTP_TIMEOUT", "GDAL_HTTP_CONNECTTIMEOUT")}
    try:
        with rasterio.Env(GDAL_HTTP_MAX_RETRY=os.environ.get("GDAL_HTTP_MAX_RETRY", "0"), **env), \
                rasterio.open(s) as src:
            if src.count < 1:
                raise InputError(f"cannot open {what} {s}: it has no raster bands (a container of "
                                 f"subdatasets? {', '.join(src.subdatasets[:3]) or 'none'})")
    except InputError:
        raise
    except Exception as exc:  # rasterio's own hierarchy, fsspec/botocore errors
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"cannot open {what} {s} with GDAL: {reason}") from exc
    return s
