"""The paired person bootstrap: how sure a difference in the competition metric is, when a person's seven photos
are one draw, not seven.

Every score the kit reports (macro F1 over the 18 classes, each head's accuracy, the >=60 band's F1) is a function
of one 18 x 18 confusion matrix. So each person is reduced to their own confusion counts, a resample is a vector of
how often each person is drawn, and the resampled confusion matrices of every resample are one matrix product:
5 folds x 2,000 resamples take well under a second. Two models scored on the same persons are resampled with the
same draws (paired, as Koehn's 2004 bootstrap for machine translation pairs sentences); folds are strata, each
resampled within itself, and a statistic is the mean of its folds' values, as the kit's fold tables report it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcls.labels import NUM_CLASSES

# The scores a comparison reports, each computed from a confusion matrix (see `scores`).
METRICS = ("f1", "acc", "acc_mask", "acc_gender", "acc_age", "f1_old")
CELLS = NUM_CLASSES * NUM_CLASSES


def person_confusions(labels, pred, persons, order=None) -> tuple[np.ndarray, np.ndarray]:
    """(the persons in `order` (default: sorted), (P, 324) confusion counts per person: cell true * 18 + pred)."""
    labels, pred, persons = np.asarray(labels), np.asarray(pred), np.asarray(persons).astype(str)
    order = np.unique(persons) if order is None else np.asarray(order).astype(str)
    index = {p: i for i, p in enumerate(order)}
    rows = np.array([index[p] for p in persons], dtype=np.int64)
    counts = np.zeros((len(order), CELLS), dtype=np.int64)
    np.add.at(counts, (rows, labels * NUM_CLASSES + pred), 1)
    return order, counts


def scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Every METRICS value of a batch of confusion matrices (..., 324) or (..., 18, 18), in numpy; macro F1 is over
    the classes present in truth or prediction, as metrics.score computes it."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.shape[-1] == CELLS:
        cm = cm.reshape(*cm.shape[:-1], NUM_CLASSES, NUM_CLASSES)
    total = cm.sum((-1, -2))
    tp, truth, said = np.diagonal(cm, axis1=-2, axis2=-1), cm.sum(-1), cm.sum(-2)
    present = (truth + said) > 0
    per_class = np.divide(2 * tp, truth + said, out=np.zeros_like(tp), where=present)
    out = {"f1": per_class.sum(-1) / np.maximum(present.sum(-1), 1),
           "acc": np.trace(cm, axis1=-2, axis2=-1) / np.maximum(total, 1)}
    # class = 6 * mask + 3 * gender + band: the axes (mask, gender, band) of truth, then of prediction
    split = cm.reshape(*cm.shape[:-2], 3, 2, 3, 3, 2, 3)
    lead = cm.ndim - 2
    for name, keep in (("mask", 0), ("gender", 1), ("age", 2)):
        drop = tuple(lead + a for a in (0, 1, 2) if a != keep) + tuple(lead + 3 + a for a in (0, 1, 2) if a != keep)
        head = split.sum(drop)
        out[f"acc_{name}"] = np.trace(head, axis1=-2, axis2=-1) / np.maximum(total, 1)
        if name == "age":
            old_tp, old_truth, old_said = head[..., 2, 2], head[..., 2, :].sum(-1), head[..., :, 2].sum(-1)
            out["f1_old"] = np.divide(2 * old_tp, old_truth + old_said, out=np.zeros_like(old_tp),
                                      where=(old_truth + old_said) > 0)
    return out


def draw_weights(n_persons: int, n_resamples: int, rng: np.random.Generator, draws: int | None = None) -> np.ndarray:
    """(R, P) how often each person is drawn in each resample of `draws` persons (default: P, the bootstrap)."""
    draws = n_persons if draws is None else draws
    picks = rng.integers(0, n_persons, size=(n_resamples, draws))
    flat = picks + (np.arange(n_resamples) * n_persons)[:, None]
    return np.bincount(flat.ravel(), minlength=n_resamples * n_persons).reshape(n_resamples, n_persons)


@dataclass(frozen=True)
class Stratum:
    """One fold's persons: the confusion counts per person of each system scored on them, in one person order."""

    systems: tuple[np.ndarray, ...]  # each (P, 324)

    @property
    def n_persons(self) -> int:
        return len(self.systems[0])


def resampled(strata: list[Stratum], n_resamples: int, seed: int = 0, draws: int | None = None
              ) -> list[dict[str, np.ndarray]]:
    """For each system, {metric: (R,) the mean over strata of the metric on each resample}; every system sees the
    same draws (paired). `draws` persons per stratum (default: as many as it has)."""
    rng = np.random.default_rng(seed)
    n_systems = len(strata[0].systems)
    sums = [{m: np.zeros(n_resamples) for m in METRICS} for _ in range(n_systems)]
    for stratum in strata:
        weights = draw_weights(stratum.n_persons, n_resamples, rng, draws).astype(np.float64)
        for s, counts in enumerate(stratum.systems):
            for m, v in scores(weights @ counts).items():
                sums[s][m] += v
    return [{m: v / len(strata) for m, v in system.items()} for system in sums]


def observed(strata: list[Stratum]) -> list[dict[str, float]]:
    """Each system's METRICS as reported: the mean over strata of each stratum's value on all its persons."""
    n_systems = len(strata[0].systems)
    return [{m: float(np.mean([scores(st.systems[s].sum(0))[m] for st in strata])) for m in METRICS}
            for s in range(n_systems)]


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap values."""
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def two_sided_p(deltas: np.ndarray) -> float:
    """How often the resampled difference falls on either side of 0, doubled from the rarer side (capped at 1): the
    bootstrap's p-value for 'no difference'."""
    deltas = np.asarray(deltas)
    return float(min(1.0, 2 * min((deltas <= 0).mean(), (deltas >= 0).mean())))


def persons_to_resolve(delta: float, half_width: float, n_persons: int) -> int | None:
    """About how many persons would make an interval of today's shape just exclude 0 for a difference of this
    size (the half-width shrinks as 1 / sqrt(persons)); None when there is no difference to resolve."""
    if abs(delta) < 1e-9 or half_width <= 0:
        return None
    return int(np.ceil(n_persons * (half_width / abs(delta)) ** 2))
