"""Mask-state accuracy under the shifts real photos bring and the synthetic templates lack.

Each shift is deterministic per image (seeded by its index), so two models meet exactly the same images.
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pandas as pd

from .dataset import ImageArrayDataset
from .labels import MASK_STATES

LOWER_FACE = 0.45  # rows below this share of the height hold the mask


def _lower_face_recolour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mask of another colour: rotate the hue and change saturation below the nose only."""
    out = img.copy()
    top = int(img.shape[0] * LOWER_FACE)
    hsv = cv2.cvtColor(out[top:], cv2.COLOR_RGB2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + rng.integers(30, 150)) % 180  # OpenCV hue is 0..179
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.3, 1.7) + 20, 0, 255)
    out[top:] = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    return out


def _low_light(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dark = img.astype(np.float32) * rng.uniform(0.25, 0.4)
    return np.clip(dark + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def _chin_cut(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A crop that ends above the chin, stretched back to the model's square input."""
    h, w = img.shape[:2]
    keep = int(h * rng.uniform(0.75, 0.85))
    return cv2.resize(img[:keep], (w, h), interpolation=cv2.INTER_LINEAR)


def _albu(transform):
    compose = A.Compose([transform])

    def apply(img, rng):
        compose.set_random_seed(int(rng.integers(2**31)))
        return compose(image=img)["image"]

    return apply


SHIFTS = {
    "none": lambda img, rng: img,
    "lower-face recolour": _lower_face_recolour,
    "grayscale": _albu(A.ToGray(p=1.0)),
    "blur": _albu(A.GaussianBlur(blur_limit=0, sigma_limit=(1.5, 2.5), p=1.0)),
    "jpeg q10": _albu(A.ImageCompression(quality_range=(8, 12), p=1.0)),
    "low light": _low_light,
    "occluding patch": _albu(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.25, 0.35),
                                             hole_width_range=(0.25, 0.35), fill="random_uniform", p=1.0)),
    "chin cut": _chin_cut,
}


def shifted(images: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    fn = SHIFTS[name]
    return np.stack([fn(img, np.random.default_rng((seed, i))) for i, img in enumerate(images)])


def mask_robustness(model, images: np.ndarray, mask_labels: np.ndarray, rt, batch_size: int = 32,
                    tta: bool = False) -> pd.DataFrame:
    """One row per shift: mask accuracy overall and per state ('incorrect' is the one templates teach worst)."""
    from .engine import predict_dataset
    from .models import head_probs
    import torch

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
