"""What one training epoch draws: each person's worn-mask photos subsampled, then a seeded order (uniform) or a
draw that shows every gender x age-band cell equally often (balanced). A function of the seed alone, so every
DDP rank draws the same epoch and a resumed run draws what an uninterrupted one would."""
from __future__ import annotations

import numpy as np
import torch

SAMPLERS = ("uniform", "balanced")


def balanced_weights(targets: np.ndarray) -> np.ndarray:
    """Per-item sampling weights that draw each gender x training-age-band cell equally often (the >=60 cells are
    a tenth of the others); mask states keep their natural 5:1:1 mix, which every person has."""
    cell = targets[:, 1] * 3 + targets[:, 2]
    counts = np.bincount(cell, minlength=6).astype(float)
    return 1.0 / counts[cell]


def epoch_rows(targets: np.ndarray, persons: np.ndarray, wear_per_person: int, seed: int,
               external_share: float = 0.0) -> np.ndarray:
    """Rows trained on this epoch: every incorrect / not-wear photo, and `wear_per_person` of each person's five
    correctly-worn ones, redrawn each epoch. The five differ only in the mask drawn over the same face, so an epoch
    costs less for little lost signal, and the mask head meets its states 2:1:1 instead of 5:1:1. Rows with no
    person (pseudo-labelled, persons < 0) are all kept. External faces (no mask state, mask < 0) are drawn anew each
    epoch, `external_share` of them per competition row kept (all when fewer), so that joint training costs a known
    share more however large the external set is."""
    own = competition_rows(targets, persons, wear_per_person, seed)
    external = np.flatnonzero(targets[:, 0] < 0)
    if not len(external):
        return own
    n = min(len(external), int(round(external_share * len(own))))
    drawn = np.random.default_rng([seed, 1]).choice(external, n, replace=False)
    return np.sort(np.concatenate([own, drawn]))


def competition_rows(targets: np.ndarray, persons: np.ndarray, wear_per_person: int, seed: int) -> np.ndarray:
    rows = np.flatnonzero(targets[:, 0] >= 0)
    if wear_per_person >= 5:
        return rows
    targets, persons = targets[rows], persons[rows]
    priority = np.random.default_rng(seed).random(len(targets))
    wear = (targets[:, 0] == 0) & (persons >= 0)
    order = np.lexsort((priority, persons))  # by person, then by random priority
    rank = np.zeros(len(targets), dtype=int)
    sorted_persons = persons[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_persons)) + 1]
    wear_sorted = wear[order]
    for a, b in zip(starts, np.r_[starts[1:], len(order)]):
        rank[order[a:b][wear_sorted[a:b]]] = np.arange(wear_sorted[a:b].sum())
    return rows[~wear | (rank < wear_per_person)]


def epoch_order(targets: np.ndarray, seed: int, sampler: str = "uniform", persons: np.ndarray | None = None,
                wear_per_person: int = 5, external_share: float = 0.0) -> np.ndarray:
    """The order of one training epoch, a function of the seed alone (so every DDP rank draws the same one):
    a permutation (uniform) or a same-length weighted draw with replacement (balanced) of epoch_rows."""
    rows = (epoch_rows(targets, persons, wear_per_person, seed, external_share) if persons is not None
            else np.arange(len(targets)))
    g = torch.Generator().manual_seed(seed)
    if sampler == "balanced":
        w = torch.as_tensor(balanced_weights(targets[rows]))
        return rows[torch.multinomial(w, len(rows), replacement=True, generator=g).numpy()]
    if sampler != "uniform":
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    return rows[torch.randperm(len(rows), generator=g).numpy()]
