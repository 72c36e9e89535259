"""The face-prior expert: per fold, a logistic regression from dlib's frozen face descriptor to gender and to age
band, averaged into the network's gender and age heads at serving time (`face_weight`).

It sees what the network's ImageNet features miss (identity-level face structure learnt from ~3 M faces), costs
seconds to fit, and is fitted on the same training persons as its fold's network, so out-of-fold scores stay
honest. Saved as plain arrays (<fold>/face_expert.npz) rather than a pickle: readable by any later version.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from mcls.labels import NUM_CLASSES, near_edge

log = logging.getLogger(__name__)

HEAD_COLUMNS = {"gender": "gender", "age": "age_band_train"}  # expert head -> training target column
C = 0.3  # inverse L2 strength on standardised descriptors; C 0.03-1 moved the expert's F1 < 0.005 on 5 utkmask folds


def fit_expert(descriptors: np.ndarray, table: pd.DataFrame, c: float = C) -> dict[str, np.ndarray]:
    """Arrays of one fold's expert, fitted on its training images' descriptors and targets."""
    from sklearn.linear_model import LogisticRegression

    ok = np.abs(descriptors).sum(1) > 0  # unreadable images have no descriptor
    x = descriptors[ok]
    mean, scale = x.mean(0), x.std(0) + 1e-6
    out = {"mean": mean, "scale": scale}
    for head, column in HEAD_COLUMNS.items():
        y = table[column].to_numpy()[ok]
        lr = LogisticRegression(C=c, max_iter=2000).fit((x - mean) / scale, y)
        coef, bias = lr.coef_, lr.intercept_
        if coef.shape[0] == 1:  # binary: sklearn keeps one row for class 1
            coef, bias = np.vstack([-coef / 2, coef / 2]), np.array([-bias[0] / 2, bias[0] / 2])
        out[f"{head}_coef"], out[f"{head}_bias"], out[f"{head}_classes"] = coef, bias, lr.classes_
    return out


def expert_probs(expert: dict[str, np.ndarray], descriptors: np.ndarray) -> dict[str, np.ndarray]:
    """{"gender": (N, 2), "age": (N, 3)} probabilities; rows without a descriptor get NaN (left to the network)."""
    x = (descriptors - expert["mean"]) / expert["scale"]
    out = {}
    for head, size in (("gender", 2), ("age", 3)):
        logits = x @ expert[f"{head}_coef"].T + expert[f"{head}_bias"]
        p = np.exp(logits - logits.max(1, keepdims=True))
        full = np.zeros((len(x), size))
        full[:, expert[f"{head}_classes"].astype(int)] = p / p.sum(1, keepdims=True)
        full[np.abs(descriptors).sum(1) == 0] = np.nan
        out[head] = full
    return out


def blend(probs: np.ndarray, expert: dict[str, np.ndarray], weight: float) -> np.ndarray:
    """18-class probabilities whose gender and age marginals become (1 - weight) * the network's + weight * the
    expert's. Each class is rescaled by its marginals' ratio, so a factorised (head x head x head) distribution
    stays factorised and the mask head is untouched."""
    out = probs.astype(np.float64).reshape(-1, 3, 2, 3)  # class = 6 * mask + 3 * gender + age band
    for head, axes, shape in (("gender", (1, 3), (-1, 1, 2, 1)), ("age", (1, 2), (-1, 1, 1, 3))):
        q = expert[head]
        net = out.sum(axes)
        target = (1 - weight) * net + weight * np.nan_to_num(q)
        ratio = np.where(np.isnan(q).any(1, keepdims=True), 1.0, target / np.maximum(net, 1e-12))
        out = out * ratio.reshape(shape)
    out = out.reshape(len(probs), NUM_CLASSES)
    return out / out.sum(1, keepdims=True)


def save_expert(path, expert: dict[str, np.ndarray]) -> None:
    from mcls.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **expert)


def load_expert(path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def descriptor_settings(cfg):
    """Where a run's face boxes come from: its crop settings (cache, confidence cut, device) even when it trains on
    whole photos, since the expert always looks at the face."""
    from mcls.data.faces import CropSettings

    return CropSettings(min_confidence=cfg.crop_min_confidence, cache_dir=cfg.crop_cache, device=cfg.device)


def fit_fold_expert(cfg, table: pd.DataFrame, k: int, path, descriptors: np.ndarray | None = None) -> None:
    """Fits and saves fold k's expert on the rows its network trains on (not fold k; the near-edge drop applied);
    `descriptors` of the table's rows, when the caller has them already."""
    from mcls.data.embeddings import face_descriptors

    if descriptors is None:
        descriptors = face_descriptors(table["path"], descriptor_settings(cfg))
    rows = (table["fold"] != k).to_numpy() & ~near_edge(table["age"], cfg.age_bounds, cfg.near_edge_drop)
    save_expert(path, fit_expert(descriptors[rows], table[rows]))


def fit_run_experts(run, cfg=None) -> list[int]:
    """Fits the expert of every trained fold of `run` (a Run) on the data, relabels and folds of its config; returns
    the folds. For runs trained without face_weight: the prior can be tried on an existing run."""
    from mcls.data.embeddings import face_descriptors
    from mcls.data.folds import assign_folds
    from mcls.data.table import load_train_table

    cfg = cfg or run.config
    table = load_train_table(cfg.data_dir, cfg.age_bounds, cfg.train_old_age, cfg.relabel_file or None)
    table["fold"] = assign_folds(table, cfg.n_folds, cfg.seed)
    descriptors = face_descriptors(table["path"], descriptor_settings(cfg))
    folds = [f.k for f in run.folds]
    for k in folds:
        fit_fold_expert(cfg, table, k, run.fold(k).face_expert, descriptors)
    log.info("face experts fitted for folds %s of %s", folds, run.path)
    return folds


def mean_expert_probs(files, descriptors: np.ndarray) -> dict[str, np.ndarray]:
    """The experts' probabilities averaged (one file per fold: the fold ensemble of experts)."""
    probs = [expert_probs(load_expert(f), descriptors) for f in files]
    return {h: np.mean([p[h] for p in probs], axis=0) for h in ("gender", "age")}


WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
