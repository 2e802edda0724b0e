"""Trial of issue 16: DEQ-Unmix with a superpixel-guided prox (a recipe, not in the package; scikit-image).

Run: ``pip install scikit-image`` then ``python recipes/trial_superpixel_prox.py [eval_deq options]``:
``recipes/eval_deq.py`` with ``--methods fcls,deq,deq_sp`` (``--sp JSON``: this class's options, e.g.
``'{"sp_hidden": 16, "sp_size": 5}'``). Its measured effect on the protocol: docs/deq.md.

The operator is DEQ-Unmix's ``T`` (projected gradient step + learned correction + projection) followed
by a blend towards superpixel means::

    A  <-  B(T(A)),   B(Z) = (1 - w) Z + w U S(Z)

``S`` mean-pools the state over the superpixels (a sparse ``n_superpixels x pixels`` pooling matrix,
applied by ``index_add``), ``U`` broadcasts each superpixel's value back to its pixels and, with
``sp_graph=True``, the means are first averaged with their neighbours on the superpixels' region
adjacency graph (row-normalised ``D^-1 (A + I)``). ``B`` is a convex combination of points of the
simplex (or of the non-negative orthant), so no second projection is needed; it is linear with
eigenvalues 1 and ``1 - w`` (non-expansive), so it keeps ``T``'s contraction. ``w = clamp(sp_weight,
0, 1)`` is learned (``learn_sp_weight``) from ``sp_weight`` (0 by default: **untrained, the model is
the default DEQ-Unmix**, i.e. projected gradient descent with FCLS's equilibrium). ``sp_hidden > 0``
adds a learned graph convolution on the symmetric-normalised region adjacency graph (zero at the
start), like the DEQ-Unmix authors' prox network.

The superpixels come from the tile's own cube, computed once per image (cached by content): SLIC
(``"slic"``, SLIC-zero, about ``sp_size`` px across) or Felzenszwalb (``"felzenszwalb"``) on the first
three principal components of the valid pixels; invalid (all-zero, filled nodata) pixels are never
pooled. Tiles overlap by at least ``2 * sp_size`` px and are blended (:attr:`DEQSuperpixel.tile_spec`):
a superpixel cut by a tile's edge differs from the whole scene's, and the blend weights those edges out.
"""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xr_unmix.models.deq import DEQUnmix
from xr_unmix.models.deq_parts import project
from xr_unmix.models.registry import register_model
from xr_unmix.tiling import TileSpec

SP_METHODS = ("slic", "felzenszwalb")


def _pca_image(Y: np.ndarray, valid: np.ndarray, k: int = 3) -> np.ndarray:
    """``(H, W, k)`` first ``k`` principal components of the valid pixels of ``Y`` ``(bands, H, W)``,
    scaled by the first component's standard deviation (0 at invalid pixels)."""
    b, H, W = Y.shape
    X = Y.reshape(b, -1)[:, valid.ravel()].T.astype(np.float64)
    X = X - X.mean(0)
    lam, V = np.linalg.eigh(X.T @ X / max(len(X), 1))  # bands x bands: cheap, unlike an SVD of X
    k = min(k, len(lam))
    P = X @ V[:, ::-1][:, :k] / math.sqrt(max(float(lam[-1]), 1e-24))
    img = np.zeros((H * W, k))
    img[valid.ravel()] = P
    return img.reshape(H, W, k)


def superpixels(Y: np.ndarray, size: int, method: str = "slic") -> np.ndarray:
    """Superpixel labels ``(H, W)`` int64 of one image ``Y`` ``(bands, H, W)`` (invalid pixels: all
    zero or non-finite in every band, each get a label of their own).

    Parameters
    ----------
    Y : ndarray (bands, H, W)
        Reflectance, nodata filled with 0 (or NaN).
    size : int
        Superpixel side, px (SLIC: ``n_segments = H W / size^2``; Felzenszwalb: ``min_size = size^2 / 2``).
    method : {"slic", "felzenszwalb"}
    """
    from skimage.segmentation import felzenszwalb, slic

    _, H, W = Y.shape
    Yf = np.nan_to_num(np.asarray(Y, dtype=np.float64))
    valid = np.isfinite(Y).all(0) & (np.abs(Yf).sum(0) > 0)
    labels = np.arange(H * W, dtype=np.int64).reshape(H, W)  # identity: every pixel its own
    if min(H, W) < 2 or valid.sum() < 4 or size <= 1:
        return labels
    img = _pca_image(Yf, valid)
    if method == "slic":
        n = max(1, round(H * W / size**2))
        seg = slic(img, n_segments=n, slic_zero=True, mask=valid, channel_axis=-1, start_label=1)
    else:
        seg = felzenszwalb(img, scale=1.0, sigma=0.5, min_size=max(2, size * size // 2),
                           channel_axis=-1) + 1
        seg[~valid] = 0
    seg = seg.astype(np.int64)
    out = np.where(valid, seg - 1 + H * W, labels)  # valid: segment ids after the pixel ids
    return np.unique(out, return_inverse=True)[1].reshape(H, W)


class Segments:
    """Superpixels of a batch ``(B, H, W)``: pixel -> superpixel index and the adjacency edges."""

    def __init__(self, labels: np.ndarray, device: torch.device) -> None:
        offs = np.concatenate([[0], np.cumsum([int(lb.max()) + 1 for lb in labels])])
        L = labels + offs[:-1, None, None]
        self.n = int(offs[-1])
        self.index = torch.as_tensor(L.reshape(-1), device=device)
        self.counts = torch.bincount(self.index, minlength=self.n).clamp_min(1)
        pairs = [np.stack([L[:, :, :-1].ravel(), L[:, :, 1:].ravel()]),
                 np.stack([L[:, :-1, :].ravel(), L[:, 1:, :].ravel()])]
        e = np.concatenate(pairs, axis=1)
        e = np.unique(e[:, e[0] != e[1]], axis=1) if e.size else e
        e = np.concatenate([e, e[::-1]], axis=1)  # both directions
        self.edges = torch.as_tensor(np.unique(e, axis=1) if e.size else e.reshape(2, 0),
                                     device=device)
        self.degree = torch.bincount(self.edges[0], minlength=self.n) + 1

    def means(self, Z: torch.Tensor) -> torch.Tensor:
        """``(n_superpixels, C)`` mean of ``Z`` ``(B, C, H, W)`` over each superpixel."""
        C = Z.shape[1]
        flat = Z.permute(0, 2, 3, 1).reshape(-1, C)
        sums = torch.zeros(self.n, C, dtype=Z.dtype, device=Z.device).index_add_(0, self.index, flat)
        return sums / self.counts[:, None].to(Z.dtype)

    def smooth(self, S: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
        """One step of ``D^-1 (A + I) S`` on the region adjacency graph (a convex average), or of
        the symmetric normalisation ``D^-1/2 (A + I) D^-1/2 S`` (``symmetric``; graph convolutions)."""
        d = self.degree[:, None].to(S.dtype)
        if symmetric:
            S = S / d.sqrt()
        nb = torch.zeros_like(S).index_add_(0, self.edges[0], S[self.edges[1]])
        return (S + nb) / (d.sqrt() if symmetric else d)

    def broadcast(self, S: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Superpixel values ``(n, C)`` back onto the pixels of ``like`` ``(B, C, H, W)``."""
        B, C, H, W = like.shape
        return S[self.index].reshape(B, H, W, C).permute(0, 3, 1, 2)


class GraphCorrection(nn.Module):
    """A two-layer graph convolution on the superpixels' normalised region adjacency graph:
    ``(n, 2R)`` superpixel features (mean state, mean step) -> ``(n, R)`` correction, zero at the
    start (last layer zero)."""

    def __init__(self, r: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(2 * r, hidden)
        self.lin2 = nn.Linear(hidden, r)
        nn.init.zeros_(self.lin2.weight)
        nn.init.zeros_(self.lin2.bias)

    def forward(self, S: torch.Tensor, seg: Segments) -> torch.Tensor:
        h = torch.nn.functional.leaky_relu(self.lin1(seg.smooth(S, symmetric=True)), 0.1)
        return self.lin2(seg.smooth(h, symmetric=True))


@register_model
class DEQSuperpixel(DEQUnmix):
    """DEQ-Unmix whose prox blends every pixel towards its superpixel's mean (module docstring).

    Parameters
    ----------
    n_bands, n_endmembers, endmember_names, wavelengths
        As :class:`~xr_unmix.models.deq.DEQUnmix`.
    sp_size : int
        Superpixel side, px (the tile halo is at least ``2 * sp_size``).
    sp_method : {"slic", "felzenszwalb"}
    sp_weight : float
        Starting blend weight ``w`` in [0, 1] (0: the untrained model is the default DEQ-Unmix).
    learn_sp_weight : bool
        Train ``w`` with the network (``fit_scene`` / ``fit``) or keep it fixed.
    sp_graph : bool
        Average the superpixel means with their neighbours on the region adjacency graph first.
    sp_hidden : int
        If > 0, a :class:`GraphCorrection` with this many hidden channels adds a learned
        per-superpixel correction (zero at the start) to ``T(A)`` before the blend, re-projected.
    **kwargs
        :class:`~xr_unmix.models.deq.DEQUnmix`'s options.
    """

    def __init__(self, n_bands: int, n_endmembers: int, endmember_names: list[str] | None = None,
                 wavelengths: list[float] | None = None, *, sp_size: int = 8, sp_method: str = "slic",
                 sp_weight: float = 0.0, learn_sp_weight: bool = True, sp_graph: bool = False,
                 sp_hidden: int = 0, **kwargs: Any) -> None:
        super().__init__(n_bands, n_endmembers, endmember_names, wavelengths, **kwargs)
        if sp_method not in SP_METHODS:
            raise ValueError(f"sp_method must be 'slic' or 'felzenszwalb', got {sp_method!r}")
        if not (0 <= sp_weight <= 1) or int(sp_size) < 1:
            raise ValueError(f"sp_weight must be in [0, 1] and sp_size >= 1, got {sp_weight}, {sp_size}")
        self.config.update(sp_size=int(sp_size), sp_method=str(sp_method), sp_weight=float(sp_weight),
                           learn_sp_weight=bool(learn_sp_weight), sp_graph=bool(sp_graph),
                           sp_hidden=int(sp_hidden))
        self.sp_w = nn.Parameter(torch.tensor(float(sp_weight)), requires_grad=bool(learn_sp_weight))
        self._seg_cache: dict[tuple, np.ndarray] = {}
        self.gcn = GraphCorrection(self.n_endmembers, int(sp_hidden)) if sp_hidden > 0 else None

    @property
    def tile_spec(self) -> TileSpec:
        """Always spatial: tiles overlap by ``max(halo, 2 * sp_size)`` px and are blended."""
        c = self.config
        return TileSpec.spatial(max(int(c["halo"]), 2 * int(c["sp_size"])), blend=True)

    def segments(self, Y: torch.Tensor) -> Segments:
        """The superpixels of every image of ``Y`` ``(B, bands, H, W)`` (see :func:`superpixels`)."""
        c = self.config
        Yn = np.ascontiguousarray(Y.detach().cpu().numpy())
        key = (Yn.shape, str(Yn.dtype), c["sp_size"], c["sp_method"],
               hashlib.blake2b(Yn.tobytes(), digest_size=16).hexdigest())
        labels = self._seg_cache.get(key)  # the labels depend on Y only: computed once per image
        if labels is None:
            labels = np.stack([superpixels(y, c["sp_size"], c["sp_method"]) for y in Yn])
            if len(self._seg_cache) >= 8:
                self._seg_cache.pop(next(iter(self._seg_cache)))
            self._seg_cache[key] = labels
        return Segments(labels, Y.device)

    def sp_blend(self, Z: torch.Tensor, seg: Segments) -> torch.Tensor:
        """``(1 - w) Z + w U S(Z)`` for a state ``Z`` ``(B, R, H, W)``."""
        w = self.sp_w.clamp(0, 1)
        S = seg.means(Z)
        if self.config["sp_graph"]:
            S = seg.smooth(S)
        return Z + w * (seg.broadcast(S, Z) - Z)

    def _map(self, Y: torch.Tensor, E: torch.Tensor, eta: torch.Tensor | None = None) -> Any:
        f = super()._map(Y, E, eta)
        seg = self.segments(Y)

        def g(A: torch.Tensor) -> torch.Tensor:
            Z = f(A)
            if self.gcn is not None:
                C = self.gcn(seg.means(torch.cat([Z, Z - A], dim=1)), seg)
                Z = project(Z + seg.broadcast(C, Z))
            return self.sp_blend(Z, seg)

        return g


def main(argv: list[str] | None = None) -> int:
    """``recipes/eval_deq.py`` with ``--methods fcls,deq,deq_sp`` unless ``--methods`` is given."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import eval_deq

    args = list(sys.argv[1:] if argv is None else argv)
    if "--methods" not in args:
        args += ["--methods", "fcls,deq,deq_sp"]
    return eval_deq.main(args)


if __name__ == "__main__":
    sys.exit(main())
