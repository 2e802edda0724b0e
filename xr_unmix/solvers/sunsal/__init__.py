"""SUnSAL: ADMM for constrained sparse regression (Bioucas-Dias & Figueiredo, 2010).

Solves, for every pixel ``y`` (a column of ``Y``) at once::

    min_x  1/2 ||y - E x||^2 + lam ||x||_1   s.t.  x >= 0 (ANC, optional),  1^T x = 1 (ASC, optional)

One idea a module:

- :mod:`.solve` -- the façade: :func:`sunsal_solve`, :func:`fcls`, :func:`nnls`, :func:`unconstrained_ls`;
- :mod:`.problem` -- checked inputs, the normalized ``R x R`` algebra, the data term ``E^T y``, NaN pixels;
- :mod:`.admm` -- the ADMM state of a set of pixels and its iterations (per-pixel ``mu`` and stop);
- :mod:`.polish` -- exact solves on a guessed support with a KKT certificate;
- :mod:`.active_set` -- the batched Lawson-Hanson solve for large libraries with ANC;
- :mod:`.phases` -- the order of the work (exact guesses, ADMM batch by batch, pooled tail) and threads;
- :mod:`.simplex` -- the Euclidean projection onto the probability simplex.

A pixel's result does not depend on which other pixels share its block, so tiled and untiled runs agree
(to float rounding). The design notes are in each module and in ``docs/sunsal.md``.
"""

from .simplex import project_simplex
from .solve import SunsalInfo, fcls, nnls, sunsal_solve, unconstrained_ls

__all__ = ["SunsalInfo", "fcls", "nnls", "project_simplex", "sunsal_solve", "unconstrained_ls"]
