"""The one training loop of the xr_unmix networks: seeding, keep-best, one divergence policy, progress.

Every network trains through :func:`train_loop` (U-ADMM-AENet and MNN-AE through
:func:`xr_unmix.models._train.fit_supervised`, DEQ-Unmix through :mod:`xr_unmix.models.deq_training`).
A caller gives it a ``step(epoch, guard)`` that trains one epoch and returns an :class:`Epoch` (the loss
of a state and, if that state is not the current one, its snapshot); the loop does the rest:

- **seeding**: with ``seed`` set, the global torch RNG is forked and seeded for the run (the caller's
  RNG state is untouched) and a private :class:`torch.Generator` is handed to the step for batch order;
- **keep-best**: :class:`KeepBest` tracks the lowest loss among the eligible states (the start
  included when the step reports it) and the model ends in that state;
- **divergence** (one policy): a non-finite loss, or one over :data:`EXPLODE` times the best so far
  (the best taken as at least :data:`EXPLODE_FLOOR`),
  stops the run; the best state is restored and one line says so (a :class:`TrainingWarning`);
- **progress**: one :func:`xr_unmix._progress.progress_bar` over the epochs.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import TrainingWarning

__all__ = ["EXPLODE", "Diverged", "Epoch", "KeepBest", "TrainingWarning", "seeded", "train_loop"]

#: a loss above this multiple of the best loss so far counts as diverged
EXPLODE = 1e3
#: ... where the best is at least this; below it the multiple is taken of this floor, so that a start
#: that fits (almost) exactly (best ~1e-12) followed by an ordinary loss (1e-3) is not called diverged
EXPLODE_FLOOR = 1e-4


class Diverged(Exception):
    """Raised inside a step (e.g. an L-BFGS closure) to stop the run on a diverging loss."""


@dataclass
class Epoch:
    """What one step reports.

    Parameters
    ----------
    loss : float
        The objective of a state (the one ``state`` holds, else the model's current one).
    eligible : bool
        Whether that state may be kept as the best (e.g. only when its solve converged).
    state : list of Tensor, optional
        Snapshot (:meth:`KeepBest.snapshot`) of the state whose loss this is, when it is not the
        current one (a full-batch step reports the loss of the state before its update).
    info : dict
        Extra per-epoch values appended to the history (``{name: float}``).
    """

    loss: float
    eligible: bool = True
    state: list[torch.Tensor] | None = None
    info: dict[str, float] = field(default_factory=dict)


class KeepBest:
    """The lowest-loss eligible state of some tensors (a model's trained parameters), restorable.

    Parameters
    ----------
    tensors : iterable of Tensor
        What defines the state (parameters, also ones outside the model such as a subspace ``V``).
    """

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        self.tensors = list(tensors)
        self.best_state = self.snapshot()
        self.best_loss = math.inf
        self.best_epoch: int | None = None

    def snapshot(self) -> list[torch.Tensor]:
        """A copy of the current state."""
        return [t.detach().clone() for t in self.tensors]

    def consider(self, loss: float, epoch: int, state: list[torch.Tensor] | None = None,
                 eligible: bool = True) -> bool:
        """Keep ``state`` (default: the current one) if eligible and better; returns whether kept."""
        if not (eligible and math.isfinite(loss) and loss < self.best_loss):
            return False
        self.best_loss, self.best_epoch = float(loss), int(epoch)
        self.best_state = state if state is not None else self.snapshot()
        return True

    def diverged(self, loss: float) -> bool:
        """Non-finite, or over :data:`EXPLODE` times the best loss so far (at least :data:`EXPLODE_FLOOR`)."""
        return not math.isfinite(loss) or (math.isfinite(self.best_loss)
                                           and loss > EXPLODE * max(self.best_loss, EXPLODE_FLOOR))

    @torch.no_grad()
    def restore(self) -> None:
        """Put the best state back (the start if nothing was eligible)."""
        for t, v in zip(self.tensors, self.best_state, strict=True):
            t.copy_(v)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[torch.Generator]:
    """A private generator (seeded, or from entropy) with the global torch RNG forked and seeded."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
        yield gen
        return
    gen.manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield gen


def train_loop(model: torch.nn.Module, step: Callable[[int, KeepBest], Epoch], *, epochs: int,
               tensors: Iterable[torch.Tensor] | None = None, first_epoch: int = 1,
               seed: int | None = None, keep_best: bool = True, desc: str = "training",
               progress: bool | None = None) -> dict[str, Any]:
    """Run ``step`` for epochs ``first_epoch .. epochs`` under the package's training policies.

    Parameters
    ----------
    model : Module
        Put in train mode while training, in eval mode after.
    step : callable
        ``step(epoch, guard) -> Epoch``; may raise :class:`Diverged` (the run then stops as on a
        diverging loss). ``step.generator`` is set to the run's private generator before the first call.
    epochs, first_epoch : int
        The epochs run (``first_epoch=0`` when epoch 0 evaluates the untrained start).
    tensors : iterable of Tensor, optional
        The state kept and restored; default the model's parameters.
    seed : int, optional
        See the module notes.
    keep_best : bool
        End in the best eligible state (else in the last one, unless the run diverged).
    desc, progress
        Progress-bar label; show it (``None``: only on a terminal).

    Returns
    -------
    dict
        ``loss`` (per epoch), any ``info`` keys, ``best_epoch`` (``None`` if no state was eligible),
        ``best_loss``, ``stopped`` (the divergence line, or ``None``), ``time_s``, ``seed``.
    """
    from .._progress import progress_bar

    guard = KeepBest(model.parameters() if tensors is None else tensors)
    hist: dict[str, Any] = {"loss": [], "stopped": None, "seed": seed}
    was = model.training
    t0 = time.perf_counter()
    bar = progress_bar(total=max(epochs - first_epoch + 1, 0), desc=desc, unit="epoch", leave=False,
                       disable=None if progress is None else not progress)
    try:
        with seeded(seed) as gen:
            step.generator = gen  # type: ignore[attr-defined]
            model.train()
            for epoch in range(first_epoch, epochs + 1):
                try:
                    r = step(epoch, guard)
                except Diverged as exc:
                    hist["stopped"] = f"epoch {epoch}: {exc}"
                    break
                hist["loss"].append(r.loss)
                for k, v in r.info.items():
                    hist.setdefault(k, []).append(v)
                if guard.diverged(r.loss):
                    hist["stopped"] = (f"epoch {epoch}: loss {r.loss:.4g} (best {guard.best_loss:.4g})")
                    break
                guard.consider(r.loss, epoch, r.state, r.eligible)
                bar.update()
    finally:
        bar.close()
        model.train(was)
    if keep_best or hist["stopped"]:
        guard.restore()
    if hist["stopped"]:
        where = "the start" if guard.best_epoch in (None, 0) else f"epoch {guard.best_epoch}"
        hist["stopped"] = f"{desc}: training diverged at {hist['stopped']}; restored {where}"
        warnings.warn(hist["stopped"], TrainingWarning, stacklevel=3)
    hist.update(best_epoch=guard.best_epoch, best_loss=guard.best_loss,
                time_s=time.perf_counter() - t0)
    model.eval()
    return hist
