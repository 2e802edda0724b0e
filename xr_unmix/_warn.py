"""Warnings that point at the user's line: the first frame outside xr_unmix (and the xarray / dask
machinery it calls through), whatever the depth of the call inside the package.

``warnings.warn(..., stacklevel=N)`` with a fixed ``N`` is right for one call path only: the accessor
(``cube.unmix.fcls``) adds a frame, ``fcls`` calls ``sunsal``, the CLI adds its own. Python 3.12's
``skip_file_prefixes`` does this; on 3.11 the stack is walked here.
"""

from __future__ import annotations

import os
import sys
import warnings

_PKG = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: libraries a package call passes through (frames skipped too): their dirs, when imported
_THROUGH = ("xarray", "dask", "toolz", "tlz")


def _skipped_prefixes() -> tuple[str, ...]:
    out = [_PKG]
    for name in _THROUGH:
        mod = sys.modules.get(name)
        f = getattr(mod, "__file__", None)
        if f:
            out.append(os.path.dirname(os.path.abspath(f)) + os.sep)
    return tuple(out)


def user_stacklevel() -> int:
    """The ``stacklevel`` that names the first caller outside the package, for a ``warnings.warn``
    made by the function that calls this one."""
    skip = _skipped_prefixes()
    level = 2  # the caller of warn_user's caller
    f = sys._getframe(2)
    while f is not None and os.path.abspath(f.f_code.co_filename).startswith(skip):
        f = f.f_back
        level += 1
    return level if f is not None else 2


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """:func:`warnings.warn` attributed to the user's line (see the module docstring)."""
    warnings.warn(message, category, stacklevel=user_stacklevel())
