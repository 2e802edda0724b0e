"""Import every model module so that their classes register for :func:`load_model`."""

import contextlib

for _name in ("uadmm", "deq"):
    with contextlib.suppress(ModuleNotFoundError):
        __import__(f"{__package__}.{_name}")
