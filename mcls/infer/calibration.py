"""Age-band prior calibration, fitted on out-of-fold predictions.

Cross-entropy heads trained on few old faces under-predict the >=60 band, and macro F1 weighs that small band's
six classes as much as the large ones. Competitors moved the training edge to 58/59 by hand; here a log-prior
bias per age band is fitted instead, on validation predictions the fold models never trained on, and applied
after TTA and person-consistent sharing, exactly where it was fitted. Its honest gain is the leave-one-fold-out
estimate: the bias scored on each fold is fitted on the other folds only.
"""
from __future__ import annotations

import itertools

import numpy as np

from mcls.errors import UserError
from mcls.io import write_json
from mcls.labels import NUM_CLASSES
from mcls.metrics import macro_f1, score
from mcls.runs.layout import Run

# Log-prior offsets tried for <30 and >=60 (30-59 is the reference, 0). Coarse on purpose: two numbers fitted to
# a few hundred persons; finer steps chase fold noise.
GRID_YOUNG = np.round(np.arange(-1.0, 1.001, 0.1), 2)
GRID_OLD = np.round(np.arange(-1.0, 2.001, 0.1), 2)


def apply_age_bias(probs: np.ndarray, bias) -> np.ndarray:
    """(N, 18) probabilities with the age bands reweighted by exp(bias) and renormalised."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1, 3, 2, 3) * np.exp(np.asarray(bias, dtype=np.float64))
    p = p.reshape(len(p), NUM_CLASSES)
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def _grid_scores(folds: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list[tuple], np.ndarray]:
    """Every grid bias, smallest first (so ties keep the gentler one), and its macro F1 on each fold."""
    grid = sorted(((y, 0.0, o) for y, o in itertools.product(GRID_YOUNG, GRID_OLD)), key=lambda b: (abs(b[0]) + abs(b[2]), b))
    table = np.zeros((len(grid), len(folds)))
    for j, (labels, probs) in enumerate(folds):
        logp = np.log(np.asarray(probs, dtype=np.float64).reshape(-1, 3, 2, 3) + 1e-12)
        for i, b in enumerate(grid):
            table[i, j] = macro_f1(labels, (logp + np.asarray(b)).reshape(len(labels), -1).argmax(1))
    return grid, table


def fit_age_bias(folds: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Fits the bias on (labels, probs) per fold; returns it with the nested per-fold scores that measure it.

    Needs two folds or more: with one there is nothing to fit on that the score is not also measured on."""
    if len(folds) < 2:
        raise UserError(f"age calibration needs out-of-fold predictions of 2 or more folds, got {len(folds)}")
    grid, table = _grid_scores(folds)
    best = int(np.argmax(table.mean(1)))
    nested = []
    for k, (labels, probs) in enumerate(folds):
        others = np.delete(table, k, axis=1).mean(1)
        bias_k = grid[int(np.argmax(others))]
        nested.append({"bias": list(bias_k), "before": score(labels, probs),
                       "after": score(labels, apply_age_bias(probs, bias_k))})
    return {"age_log_bias": [float(b) for b in grid[best]], "in_sample_f1": float(table[best].mean()),
            "nested": nested}


def summarise(fit: dict) -> dict:
    """Mean scores before / after (nested) over the folds, for summaries and tables."""
    out = {"age_log_bias": fit["age_log_bias"]}
    for when in ("before", "after"):
        for key in ("f1", "acc", "acc_age", "f1_age", "f1_old"):
            out[f"{key}_{when}"] = float(np.mean([n[when][key] for n in fit["nested"]]))
    out["f1_after_std"] = float(np.std([n["after"]["f1"] for n in fit["nested"]]))
    return out


def calibrate_run(run: Run, serving) -> dict | None:
    """Fits the run's age bias on its folds' out-of-fold predictions as `serving` (without a bias) serves them: for
    a run with members, their average, which is what the run serves. Writes the run's calibration.json; None (and
    no file) with fewer than two folds."""
    folds = serving.oof()
    if len(folds) < 2:
        return None
    fit = fit_age_bias([(f.labels, f.probs) for f in folds.values()])
    about = {"runs": [str(r.path) for r in serving.runs]} if len(serving.runs) > 1 else {}
    record = {**summarise(fit), "folds": list(folds), "person_consistent": serving.person_consistent, **about,
              "in_sample_f1": fit["in_sample_f1"], "nested": fit["nested"]}
    write_json(run.calibration_file, record)
    return record
