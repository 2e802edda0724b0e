"""Endmember extraction (VCA) and estimation of the number of endmembers (HySime).

Both algorithms need only a handful of statistics of the valid pixels and a few pixels in full, so a
Dask-backed cube is processed block by block and never loaded whole:

- **VCA** (Nascimento & Bioucas-Dias, 2005). One pass accumulates the sum and the uncentred correlation
  ``sum_j y_j y_j^T`` (float64) over the valid pixels; the SNR estimate and the projection (PCA onto
  ``p - 1`` dims below the SNR threshold ``15 + 10 log10(p)`` dB, projective projection onto ``p`` dims
  above it) come from these. A second pass keeps every valid pixel's ``p`` projected coordinates
  (float64) when they fit in ``_CACHE_BYTES`` (256 MiB: 6.7 million pixels at ``p = 5``); the ``p``
  picks are then made in memory and only the ``p`` chosen pixels are read again in full (one chunk
  each). Above that limit the search streams instead: one pass per endmember, each block returning its
  best pixel and that pixel's spectrum (plus one pass for the scale ``c`` at low SNR). Inside a block,
  pixels are converted to float64 ``_BATCH`` at a time, so a task holds little beyond its block.
- With ``sample=k`` the algorithm instead runs on ``k`` valid pixels drawn with a seeded generator
  (one pass computes the ``(y, x)`` validity mask, a second gathers the drawn pixels).
- **HySime** (Bioucas-Dias & Nascimento, 2008) needs only the uncentred correlation: the
  multiple-regression noise estimate, the signal correlation and the subspace-size cost are all
  closed-form functions of it, so it is one pass too.

The same code runs on a NumPy cube (one block) and on a Dask cube (many blocks): for the same seed both
pick the same pixels; the endmembers agree to floating-point summation order (float64 statistics).

Modules: ``_blocks`` (the NumPy/Dask block engine and the one-pass statistics), ``_vca``, ``_hysime``
and ``_entry`` (the cube-level :func:`extract_endmembers` and the ``vca:N`` specs).
"""

from __future__ import annotations

from ._entry import endmembers_from_spec, extract_endmembers, is_extraction_spec
from ._hysime import estimate_n_endmembers, hysime, noise_sigma
from ._vca import VCAResult, vca

__all__ = ["VCAResult", "endmembers_from_spec", "estimate_n_endmembers", "extract_endmembers", "hysime",
           "is_extraction_spec", "noise_sigma", "vca"]
