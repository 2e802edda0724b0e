"""Import every model module so that their classes register for :func:`load_model`."""

from . import deq, uadmm  # noqa: F401  (registration is the import's side effect)
