"""The Monte Carlo draws of bundle unmixing (:mod:`xr_unmix.bundles`): class-even endmember sets,
made from the seed alone before any block is read."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def class_even_draws(class_index: np.ndarray, n_classes: int, n_mc: int, max_endmembers: int,
                     seed: int | None) -> np.ndarray:
    """Library columns of each Monte Carlo draw, ``(n_mc, k)`` int.

    Per draw: the classes in a random order, each class's spectra shuffled; spectra are then taken
    one class at a time, round-robin, until ``k = min(max_endmembers, n_spectra)`` are picked (a class
    that runs out is skipped). With ``max_endmembers >= n_classes`` every class is in every draw; with
    fewer, a random subset of ``max_endmembers`` classes. Depends on ``seed`` only.
    """
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(class_index == c) for c in range(n_classes)]
    k = min(int(max_endmembers), int(class_index.size))
    draws = np.empty((n_mc, k), dtype=np.int64)
    for d in range(n_mc):
        order = rng.permutation(n_classes)
        pools = [list(rng.permutation(members[c])) for c in order]
        picked: list[int] = []
        while len(picked) < k:
            for pool in pools:
                if pool and len(picked) < k:
                    picked.append(int(pool.pop(0)))
        draws[d] = picked
    return draws


def draw_sets(class_index: np.ndarray, n_classes: int, n_mc: int, sizes: Sequence[int],
              seed: int | None) -> list[np.ndarray]:
    """:func:`class_even_draws` for each set size in ``sizes`` (ascending): ``n_mc`` draws of each,
    smallest sets first, as one list of column arrays. One size draws exactly what
    :func:`class_even_draws` draws with ``seed``; with several, size ``i`` is seeded ``[seed, i]``."""
    if len(sizes) == 1:
        return list(class_even_draws(class_index, n_classes, n_mc, sizes[0], seed))
    return [row for i, k in enumerate(sizes) for row in class_even_draws(
        class_index, n_classes, n_mc, k, None if seed is None else [int(seed), i])]
