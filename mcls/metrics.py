"""Scores: macro F1 over the 18 classes (the competition metric) and per head."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from mcls.labels import NUM_CLASSES, decode


def score(labels, probs) -> dict[str, float]:
    """labels: (N,) true classes; probs: (N, 18). Macro F1 is over the classes present in truth or prediction."""
    labels = np.asarray(labels)
    pred = np.asarray(probs).argmax(1)
    out = {"f1": f1_score(labels, pred, average="macro", zero_division=0), "acc": accuracy_score(labels, pred)}
    for name, t, p in zip(("mask", "gender", "age"), decode(labels), decode(pred)):
        out[f"f1_{name}"] = f1_score(t, p, average="macro", zero_division=0)
        out[f"acc_{name}"] = accuracy_score(t, p)
    age_t, age_p = decode(labels)[2], decode(pred)[2]
    out["f1_old"] = f1_score(age_t == 2, age_p == 2, zero_division=0)  # the small >=60 band
    return {k: float(v) for k, v in out.items()}


def macro_f1(labels: np.ndarray, pred: np.ndarray) -> float:
    """score()'s macro F1 (classes present in truth or prediction) of predicted classes, in numpy: calibration's
    grid and ensemble selection call it thousands of times."""
    k = NUM_CLASSES
    cm = np.bincount(labels * k + pred, minlength=k * k).reshape(k, k)
    tp, truth, said = np.diag(cm), cm.sum(1), cm.sum(0)
    present = (truth + said) > 0
    return float((2 * tp[present] / (truth[present] + said[present])).mean())


def per_class_f1(labels, probs) -> np.ndarray:
    return f1_score(labels, np.asarray(probs).argmax(1), labels=range(NUM_CLASSES), average=None, zero_division=0)


def confusion(labels, probs) -> np.ndarray:
    return confusion_matrix(labels, np.asarray(probs).argmax(1), labels=range(NUM_CLASSES))


def epoch_choice_scores(histories: dict, key: str | None = None) -> dict:
    """How much a fold's reported score owes to choosing its epoch on the persons it is scored on.

    From each fold's per-epoch validation `key` (metrics.csv rows, one DataFrame per fold): `sel_own_f1`, the mean
    over folds of each fold's best epoch (what best.pt reports: optimistic, the same persons chose it);
    `sel_last_f1`, the last epoch; `sel_other_f1`, each fold scored at the epoch that is best on average over the
    *other* folds (an honest estimate of the rule "train that many epochs"; needs 2+ folds). The default `key` is
    the score the epoch was chosen on: `served_f1` where every fold kept it (as the config serves the fold: flip TTA,
    person sharing), else `f1` (per image, for runs from before)."""
    import pandas as pd

    if key is None:
        key = "served_f1" if histories and all("served_f1" in h for h in histories.values()) else "f1"
    per = {k: pd.Series(h[key].to_numpy(), index=h["epoch"].to_numpy()) for k, h in histories.items() if len(h)}
    if not per:
        return {}
    out = {"sel_own_f1": float(np.mean([s.max() for s in per.values()])),
           "sel_last_f1": float(np.mean([s.iloc[-1] for s in per.values()]))}
    if len(per) >= 2:
        chosen = {}
        for k, s in per.items():
            others = pd.concat([o for j, o in per.items() if j != k], axis=1).dropna()  # epochs every other fold ran
            common = others.index.intersection(s.index)
            if len(common):
                chosen[k] = int(others.loc[common].mean(axis=1).idxmax())
        if chosen:
            out["sel_other_f1"] = float(np.mean([per[k][e] for k, e in chosen.items()]))
            out["sel_other_epochs"] = {str(k): e for k, e in chosen.items()}
    return out
