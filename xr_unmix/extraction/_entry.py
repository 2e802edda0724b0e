"""The cube-level entry points: :func:`extract_endmembers` and the command line's ``vca:N`` specs."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from .._cube import BAND, ENDMEMBER, X, Y, prepare_cube
from ._blocks import _sample_positions, _Source
from ._hysime import estimate_n_endmembers
from ._vca import _check_n, _vca_source


def extract_endmembers(
    cube: xr.DataArray,
    n: int,
    *,
    method: str = "vca",
    seed: int | None = None,
    sample: int | None = None,
    snr: float | None = None,
) -> xr.DataArray:
    """Extract ``n`` endmembers from a cube with VCA.

    Parameters
    ----------
    cube : DataArray (band, y, x), any dim order, NumPy- or Dask-backed
        Pixels with NaN or the nodata value in any band are never chosen and do not enter the
        statistics. A Dask cube is never loaded whole: see the module notes for the passes made.
    n : int
        Number of endmembers, ``2 <= n <= bands`` (see :func:`estimate_n_endmembers`).
    method : {"vca"}
    seed : int, optional
        Seeds VCA's random directions and, with ``sample``, the pixel draw. Same seed: same result on
        a NumPy and a Dask cube.
    sample : int, optional
        Run on this many valid pixels drawn at random (seeded) instead of all of them (one pass for
        the validity mask, one to gather the sample; then everything runs in memory). Pure pixels left
        out of the sample cannot be found. ``None`` (default): all valid pixels (two passes, or
        ``n + 1`` on very large scenes: see the module notes).
    snr : float, optional
        Known SNR in dB (else estimated).

    Returns
    -------
    DataArray (band, endmember), float64
        The endmember spectra in the cube's units, projected on the signal subspace (VCA's denoised
        pixels). Coordinates: the cube's ``band`` coordinates (e.g. ``wavelength``), names
        ``vca0, vca1, ...`` in the order found, and per endmember where it came from: ``pixel_row``,
        ``pixel_col`` (integer positions) and ``pixel_y``, ``pixel_x`` (the cube's ``y``/``x``
        coordinates there, e.g. map coordinates). ``attrs`` record the method, seed, SNR and
        projection.

    Raises
    ------
    ValueError
        Unknown method, ``n < 2``, ``n`` above the band count, a cube with no valid pixel or fewer
        valid pixels than ``n``.
    """
    if method != "vca":
        raise ValueError(f"unknown method {method!r}: the only extraction method is 'vca'")
    data, facts = prepare_cube(cube, np.float32)
    p = _check_n(n, facts.n_bands)
    H, W = facts.shape_yx
    if sample is not None:
        sample = int(sample)
        if sample < p:
            raise ValueError(f"sample={sample} pixels is fewer than n={p} endmembers")
        pos = _sample_positions(data, sample, seed)
        Ys = _Source(data).fetch(pos)
        E, info = _vca_source(_Source(Ys), p, seed, snr)
        flat = pos[info.indices]
    else:
        E, info = _vca_source(_Source(data), p, seed, snr)
        flat = info.indices
    rows, cols = flat // W, flat % W
    names = np.array([f"vca{i}" for i in range(p)], dtype=object)
    coords: dict[str, Any] = {ENDMEMBER: names,
                              "pixel_row": (ENDMEMBER, rows.astype(np.int64)),
                              "pixel_col": (ENDMEMBER, cols.astype(np.int64))}
    for dim, pos_ in ((Y, rows), (X, cols)):
        if dim in cube.coords:
            coords[f"pixel_{dim}"] = (ENDMEMBER, np.asarray(cube.coords[dim].values)[pos_])
    for k, c in cube.coords.items():
        if c.dims == (BAND,):
            coords[k] = c.variable
    attrs = {"method": "vca", "seed": "none" if seed is None else int(seed), "snr_db": info.snr_db,
             "snr_estimated": int(info.snr_estimated), "projection": info.projection,
             "n_pixels_searched": info.n_pixels, "sample": "none" if sample is None else sample}
    return xr.DataArray(E, dims=(BAND, ENDMEMBER), coords=coords, name="endmembers", attrs=attrs)


def is_extraction_spec(spec: str) -> bool:
    """Whether an ``--endmembers`` value asks for extraction (``"vca"``, ``"vca:N"``, ``"vca:auto"``)
    rather than naming a file."""
    return isinstance(spec, str) and (spec.lower() == "vca" or spec.lower().startswith("vca:"))


def endmembers_from_spec(
    cube: xr.DataArray,
    spec: str,
    *,
    seed: int | None = None,
    sample: int | None = None,
) -> xr.DataArray:
    """Endmembers for a blind pipeline from a short spec, as the command line takes them.

    Parameters
    ----------
    cube : DataArray (band, y, x)
    spec : str
        ``"vca:N"`` (VCA with ``N`` endmembers), or ``"vca"`` / ``"vca:auto"`` (``N`` estimated by
        HySime first; on real scenes HySime often gives more than the number of materials).
    seed, sample
        Passed to :func:`extract_endmembers`.

    Returns
    -------
    DataArray (band, endmember), as :func:`extract_endmembers`; ``attrs["spec"]`` records ``spec``.

    Raises
    ------
    ValueError
        A spec that is not of these forms (the message shows the accepted forms).
    """
    if not is_extraction_spec(spec):
        raise ValueError(f"endmember spec {spec!r} not understood: use 'vca:N' (e.g. 'vca:4') or "
                         "'vca:auto' (N from HySime)")
    arg = spec.split(":", 1)[1].strip() if ":" in spec else "auto"
    if arg.lower() == "auto":
        n = estimate_n_endmembers(cube)
    else:
        try:
            n = int(arg)
        except ValueError:
            raise ValueError(f"endmember spec {spec!r}: {arg!r} is not an integer; use 'vca:N' or "
                             "'vca:auto'") from None
    E = extract_endmembers(cube, n, seed=seed, sample=sample)
    E.attrs["spec"] = spec
    return E
