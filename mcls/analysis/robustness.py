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
