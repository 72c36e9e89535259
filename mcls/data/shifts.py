"""Photo shifts that real photos bring and the synthetic mask templates lack: another mask colour, low light, a
crop above the chin. Training augments with them; the robustness report measures the mask head under them."""
from __future__ import annotations

import cv2
import numpy as np

LOWER_FACE = 0.45  # rows below this share of the height hold the mask


def lower_face_recolour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mask of another colour: rotate the hue and change saturation below the nose only."""
    out = img.copy()
    top = int(img.shape[0] * LOWER_FACE)
    hsv = cv2.cvtColor(out[top:], cv2.COLOR_RGB2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + rng.integers(30, 150)) % 180  # OpenCV hue is 0..179
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.3, 1.7) + 20, 0, 255)
    out[top:] = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    return out


def low_light(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dark = img.astype(np.float32) * rng.uniform(0.25, 0.4)
    return np.clip(dark + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def chin_cut(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A crop that ends above the chin, stretched back to the model's square input."""
    h, w = img.shape[:2]
    keep = int(h * rng.uniform(0.75, 0.85))
    return cv2.resize(img[:keep], (w, h), interpolation=cv2.INTER_LINEAR)
