"""Mask-state accuracy under the shifts real photos bring and the synthetic templates lack.

Each shift is deterministic per image (seeded by its index), so two models meet exactly the same images.
"""
from __future__ import annotations

import albumentations as A
import numpy as np
import pandas as pd

from mcls.data.dataset import ImageArrayDataset
from mcls.data.shifts import chin_cut, low_light, lower_face_recolour
from mcls.labels import MASK_STATES


def _albu(transform):
    compose = A.Compose([transform])

    def apply(img, rng):
        compose.set_random_seed(int(rng.integers(2**31)))
        return compose(image=img)["image"]

    return apply


SHIFTS = {
    "none": lambda img, rng: img,
    "lower-face recolour": lower_face_recolour,
    "grayscale": _albu(A.ToGray(p=1.0)),
    "blur": _albu(A.GaussianBlur(blur_limit=0, sigma_limit=(1.5, 2.5), p=1.0)),
    "jpeg q10": _albu(A.ImageCompression(quality_range=(8, 12), p=1.0)),
    "low light": low_light,
    "occluding patch": _albu(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.25, 0.35),
                                             hole_width_range=(0.25, 0.35), fill="random_uniform", p=1.0)),
    "chin cut": chin_cut,
}


def shifted(images: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    fn = SHIFTS[name]
    return np.stack([fn(img, np.random.default_rng((seed, i))) for i, img in enumerate(images)])


def mask_robustness(model, images: np.ndarray, mask_labels: np.ndarray, rt, batch_size: int = 32,
                    tta: bool = False) -> pd.DataFrame:
    """One row per shift: mask accuracy overall and per state ('incorrect' is the one templates teach worst)."""
    import torch

    from mcls.infer.predictor import predict_dataset
    from mcls.model.classifier import head_probs

    rows = []
    for name in SHIFTS:
        probs = predict_dataset(model, ImageArrayDataset(shifted(images, name)), rt, batch_size, tta=tta,
                                desc=f"shift {name}")
        pred = head_probs(torch.as_tensor(probs)).get("mask").argmax(1).numpy()
        row = {"shift": name, "acc_mask": float((pred == mask_labels).mean())}
        for k, state in enumerate(MASK_STATES):
            row[f"acc_{state.replace(' ', '_')}"] = float((pred[mask_labels == k] == k).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def real_mask_f1(true: np.ndarray, pred: np.ndarray, sources=None) -> dict:
    """Mask-state scores of predictions on real photos: macro F1 over the three states, F1 per state, and (with
    `sources`, one name per photo) macro F1 per source over the states that source has."""
    from sklearn.metrics import f1_score

    per_state = f1_score(true, pred, labels=[0, 1, 2], average=None, zero_division=0)
    out = {"real_mask_f1": float(f1_score(true, pred, labels=[0, 1, 2], average="macro", zero_division=0)),
           **{f"real_f1_{MASK_STATES[k].replace(' ', '_')}": float(per_state[k]) for k in range(3)}}
    if sources is not None:
        for source, rows in pd.Series(sources).groupby(sources).groups.items():
            present = sorted(set(true[rows]))
            out[f"real_mask_f1_{source}"] = float(f1_score(true[rows], pred[rows], labels=present, average="macro",
                                                           zero_division=0))
    return out


def real_mask_scores(checkpoint, labels_csv, device: str = "cpu") -> dict:
    """The mask head of one checkpoint on real photos with mask labels (a CSV of path, mask[, source] with paths
    relative to it, like ../shared/data/realmask-dev/labels.csv): real_mask_f1's scores. Served plainly (one
    model, flip TTA, no person sharing: the photos are of different people)."""
    from pathlib import Path

    from mcls.infer.predictor import predict_paths
    from mcls.infer.serving import Serving
    from mcls.labels import decode

    labels_csv = Path(labels_csv)
    table = pd.read_csv(labels_csv)
    paths = [str(labels_csv.parent / p) for p in table["path"]]
    serving = Serving.resolve(checkpoint, {"person_consistent": False, "calibrate_age": False, "tta": True})
    probs = predict_paths(paths, serving, device)[0]
    sources = table["source"].to_numpy() if "source" in table else None
    return real_mask_f1(table["mask"].to_numpy(), decode(probs.argmax(1))[0], sources)
