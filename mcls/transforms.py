"""Training augmentations by name (albumentations 2.x argument names). Evaluation applies none: images are
already at model size in the cache, and normalisation lives inside the model, so train and test inputs match."""
from __future__ import annotations

import albumentations as A
import cv2


def _light() -> list:
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-10, 10),
                 border_mode=cv2.BORDER_REFLECT_101, p=0.7),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=0.3),
    ]


def _strong() -> list:
    return _light() + [
        A.ToGray(p=0.1),
        A.GaussianBlur(blur_limit=(3, 5), p=0.1),
        A.GaussNoise(std_range=(0.02, 0.06), p=0.2),
        A.ImageCompression(quality_range=(40, 90), p=0.2),
        A.GridDropout(ratio=0.3, p=0.2),
    ]


AUGMENTATIONS = {"none": list, "light": _light, "strong": _strong}


def create_train_transform(name: str) -> A.Compose | None:
    """The named augmentation set over HxWx3 uint8 arrays, or None for 'none'."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {name!r}; valid: {sorted(AUGMENTATIONS)}")
    steps = AUGMENTATIONS[name]()
    return A.Compose(steps) if steps else None
