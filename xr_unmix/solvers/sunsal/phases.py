"""The order in which one SUnSAL call solves its pixels, and on how many threads.

- **Phase 0** (with polishing): before any iteration, every pixel is polished from the support of ``x0``
  (default: all endmembers, i.e. the equality-constrained LS solution), with up to three active-set
  corrections, in slices of up to ``65536`` pixels (elementwise work: larger slices only amortise
  per-call overhead). On the scale benchmark 91 % of the pixels are certified by the first solve and all
  of them within three corrections, so ADMM runs only for the rare pixel whose active set this misses.
  The answer is the same certified optimum (the problem is strictly convex); only the work changes
  (``SunsalInfo.mean_iterations`` is then about 0).
- **Active set** (a large library with ANC, ``2^R`` over the polisher's table): a batched Lawson-Hanson
  solve of every pixel instead (:mod:`.active_set`); ADMM, without polishing, only for the pixels it
  leaves (none so far measured).
- **Phase 1**, batch by batch (``batch_pixels``, cache-sized): the first 30 ADMM iterations of the pixels
  left, where with polishing almost every pixel finishes. **Phase 2**: the pixels left from all batches,
  pooled into one working set, so the per-iteration overhead of a long tail is paid once rather than
  once per batch. Each pixel follows its own trajectory, so the split does not change any answer.
- Batches run on :func:`xr_unmix.runtime.batch_workers` threads with one torch thread each.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ...runtime import batch_workers, single_torch_thread
from .active_set import active_set_solve
from .admm import CHECK_EVERY, Admm, WorkingSet
from .problem import Inputs, Normalized

_POLISH_BATCH = 65536  # pixels per polish call before the first iteration (phase 0)
_ACTIVE_SET_BATCH = 8192  # pixels per active-set call (large libraries with ANC)
_MIN_SPLIT = 256  # smallest batch a call is split into to give each thread one


def run_batches(fn: Callable[[Any], Any], items: list[Any], device: torch.device) -> list[Any]:
    """``[fn(item) for item in items]``, on several threads (one torch thread each) where the runtime's
    thread policy allows.

    Inference and grad mode are thread-local: the pool's threads run in the caller's (arrays made under
    ``torch.inference_mode`` can only be updated inside it).
    """
    workers = batch_workers(device, len(items))
    if workers <= 1:
        return [fn(it_) for it_ in items]
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def in_mode(item: Any) -> Any:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(item)

    with single_torch_thread(), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(in_mode, items))


class Schedule:
    """The phases of one call over the data term ``b_all`` (R, N), writing into ``admm.out``."""

    def __init__(self, inp: Inputs, nrm: Normalized, admm: Admm, b_all: torch.Tensor, *, max_iter: int,
                 batch_pixels: int) -> None:
        self.inp, self.nrm, self.admm, self.b_all = inp, nrm, admm, b_all
        self.max_iter, self.batch_pixels = max_iter, batch_pixels
        self.head = max_iter if admm.polisher is None else min(max_iter, 3 * CHECK_EVERY)
        self.step = max(batch_pixels, _POLISH_BATCH)  # pixels per phase-0 / active-set call (set by run)

    def _x0(self, start: int, stop: int) -> torch.Tensor | None:
        return self.inp.x0t[:, start:stop] if self.inp.x0t is not None else None

    def phase0(self, start: int) -> torch.Tensor:
        """Polish pixels ``start..`` from the support of x0 (default: every endmember; the active-set
        corrections then drop the wrong-sign entries); returns the indices of those not certified."""
        N = self.inp.N
        stop = min(N, start + self.step)
        b = self.b_all[:, start:stop]
        x0 = self._x0(start, stop)
        xp, okp = self.admm.polisher(b, x0 if x0 is not None else torch.ones_like(b))  # type: ignore[misc]
        k = int(okp.sum())
        self.admm.tally.merge(n_conv=k, n_pol=k)
        self.admm.out[:, start:stop] = xp  # the pixels not certified are overwritten by ADMM later
        if k == stop - start:
            return torch.empty(0, dtype=torch.long, device=self.inp.dev)
        return (~okp).nonzero()[:, 0] + start

    def phase_as(self, start: int) -> torch.Tensor:
        """The active-set solve of pixels ``start..``; returns the indices of those not certified."""
        stop = min(self.inp.N, start + self.step)
        x, ok, steps = active_set_solve(self.nrm.G64, self.b_all[:, start:stop], self.nrm.lam_n,
                                        self.admm.asc, x0=self._x0(start, stop))
        self.admm.out[:, start:stop] = x.to(self.inp.dtype)
        k = int(ok.sum())
        self.admm.tally.merge(n_conv=k, n_pol=k, total_it=float(steps[ok].sum()),
                              max_used=int(steps.max()) if steps.numel() else 0)
        return (~ok).nonzero()[:, 0] + start

    def phase1(self, batch: tuple[int, int] | torch.Tensor) -> WorkingSet | None:
        """ADMM's first ``head`` iterations on a range (start, stop) or an index tensor of pixels."""
        dtype, dev, x0t = self.inp.dtype, self.inp.dev, self.inp.x0t
        if isinstance(batch, tuple):
            idx = torch.arange(*batch, device=dev)
            b = self.b_all[:, batch[0]:batch[1]].to(dtype).contiguous()
            z0 = x0t[:, batch[0]:batch[1]].clone() if x0t is not None else None
        else:
            idx = batch
            b = self.b_all.index_select(1, idx).to(dtype)
            z0 = x0t.index_select(1, idx) if x0t is not None else None
        n = idx.numel()
        if z0 is None:
            z0 = torch.zeros((self.inp.R, n), dtype=dtype, device=dev)
        ws = WorkingSet(idx=idx, z=z0, d=torch.zeros_like(z0), x=z0,
                        mu=torch.full((1, n), self.nrm.mu0, dtype=dtype, device=dev), b=b,
                        rp=torch.zeros(n, dtype=dtype, device=dev))
        self.admm.iterate(ws, 0, self.head)
        return ws if ws.idx.numel() else None

    def run(self, use_active_set: bool) -> list[WorkingSet]:
        """All phases; returns the working sets of the pixels that ran out of iterations."""
        N, bp, dev = self.inp.N, self.batch_pixels, self.inp.dev
        if use_active_set or self.admm.polisher is not None:
            fn, step = (self.phase_as, _ACTIVE_SET_BATCH) if use_active_set else (
                self.phase0, max(bp, _POLISH_BATCH))
            par = batch_workers(dev, N)
            if par > 1:  # at least one batch per thread: one batch alone ran on torch's intra-op threads,
                # 2-10x slower than one thread for these small kernels (R=62, 2304 px: 1.5 s on 1 thread,
                # 7-16 s on 2 at load 10)
                step = min(step, max(_MIN_SPLIT, -(-N // par)))
            self.step = step
            rest = run_batches(fn, list(range(0, N, step)), dev)
            todo = torch.cat(rest) if rest else torch.empty(0, dtype=torch.long, device=dev)
            batches: list[Any] = [todo[i:i + bp] for i in range(0, todo.numel(), bp)]
        else:
            batches = [(i, min(N, i + bp)) for i in range(0, N, bp)]
        left = [p for p in run_batches(self.phase1, batches, dev) if p is not None]
        if left and self.head < self.max_iter:
            ws = WorkingSet.concat(left)
            self.admm.iterate(ws, self.head, self.max_iter)
            left = [ws] if ws.idx.numel() else []
        return left
