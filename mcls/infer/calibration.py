"""Age-band prior calibration, fitted on out-of-fold predictions.

Cross-entropy heads trained on few old faces under-predict the >=60 band, and macro F1 weighs that small band's
six classes as much as the large ones. Competitors moved the training edge to 58/59 by hand; here a log-prior
bias per age band is fitted instead, on validation predictions the fold models never trained on, and applied
after TTA and person-consistent sharing, exactly where it was fitted. Its honest gain is the leave-one-fold-out
estimate: the bias scored on each fold is fitted on the other folds only.
"""
from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mcls.infer.persons import share_within_groups
from mcls.io import write_json
from mcls.labels import NUM_CLASSES, PROB_COLUMNS
from mcls.metrics import macro_f1, score

FILE = "calibration.json"
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
        raise ValueError(f"age calibration needs out-of-fold predictions of 2 or more folds, got {len(folds)}")
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


def fold_predictions(runs, person_consistent: bool) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{fold: (labels, probs as served)} from each fold's val_predictions.csv of a run, or of several runs on the
    same folds averaged (a run and its ensemble members), over the folds every run finished; shared within the
    first run's blind groups when the run predicts person-consistently."""
    runs = [Path(runs)] if isinstance(runs, (str, Path)) else [Path(r) for r in runs]
    tables = [{fold_number(p): (p, pd.read_csv(p)) for p in sorted(r.glob("fold*/val_predictions.csv"))} for r in runs]
    out = {}
    for k in sorted(set.intersection(*(set(t) for t in tables))):
        path, first = tables[0][k]
        probs = []
        for t in tables:
            other_path, other = t[k]
            other = other.set_index("path").reindex(first["path"])
            if other[PROB_COLUMNS].isna().any().any():
                raise ValueError(f"{other_path}: validation images differ from {path}; members must share data and "
                                 "folds")
            probs.append(other[PROB_COLUMNS].to_numpy(np.float32))
        mean = np.mean(probs, axis=0)
        if person_consistent:
            if "group" not in first:
                raise ValueError(f"{path}: no 'group' column (written before person groups were saved); "
                                 "re-run the fold, or calibrate with person_consistent=false")
            mean = share_within_groups(mean, first["group"].to_numpy())
        out[k] = (first["label"].to_numpy(), mean)
    return out


def fold_number(path: str | Path) -> int:
    """k of a file inside a run's fold<k>/ folder."""
    return int(Path(path).parent.name.removeprefix("fold"))


def calibrate_run(run_dir: str | Path, person_consistent: bool, runs: list | None = None) -> dict | None:
    """Fits the run's age bias on its folds' validation predictions (with `runs`, the run and its ensemble members:
    on their average, which is what the run serves) into <run>/calibration.json; None (and no file) with fewer
    than two folds."""
    runs = [run_dir] if runs is None else runs
    folds = fold_predictions(runs, person_consistent)
    if len(folds) < 2:
        return None
    fit = fit_age_bias(list(folds.values()))
    about = {"runs": [str(r) for r in runs]} if len(runs) > 1 else {}
    record = {**summarise(fit), "folds": list(folds), "person_consistent": person_consistent, **about,
              "in_sample_f1": fit["in_sample_f1"], "nested": fit["nested"]}
    write_json(Path(run_dir) / FILE, record)
    return record


def load_age_bias(run: str | Path, persons: bool | None = None) -> np.ndarray | None:
    """The bias fitted for a run folder (or for the run a fold checkpoint belongs to); None if never fitted.
    `persons`: whether the predictions it is applied to are shared within person groups; a bias fitted the other
    way is still returned, with a warning that it only approximates the fitted one there."""
    run = Path(run)
    if run.is_file():  # runs/<run>/fold<k>/best.pt
        run = run.parent.parent if run.parent.name.startswith("fold") else run.parent
    path = run / FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        bias = np.asarray(record["age_log_bias"], dtype=np.float64)
    except (ValueError, KeyError) as err:
        raise ValueError(f"{path}: not a calibration record ({err})") from None
    fitted = record.get("person_consistent")
    if persons is not None and fitted is not None and fitted != persons:
        warnings.warn(f"{path}: the age bias was fitted with person_consistent={fitted} and is applied with "
                      f"{persons}: an approximation there (refit with `mcls calibrate --run {run} "
                      f"person_consistent={str(persons).lower()}`)", stacklevel=2)
    return bias
