"""Training augmentations by name (albumentations 2.x argument names). Evaluation applies none: images are
already at model size in the cache, and normalisation lives inside the model, so train and test inputs match."""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from mcls.data.shifts import chin_cut, low_light, lower_face_recolour


class _SeededImageOnly(A.ImageOnlyTransform):
    """Runs fn(image, rng) with a numpy generator drawn from albumentations' own seeded one, so Compose's
    set_random_seed (per item and epoch) governs it like every other step."""

    fn = staticmethod(lambda img, rng: img)

    def get_params_dependent_on_data(self, params, data):
        return {"seed": int(self.random_generator.integers(2**31))}

    def apply(self, img, seed=0, **params):
        return self.fn(img, np.random.default_rng(seed))


class LowerFaceRecolour(_SeededImageOnly):
    """A mask of another colour and saturation: real masks come in every colour, the templates in a few."""

    fn = staticmethod(lower_face_recolour)


class ChinCut(_SeededImageOnly):
    """A crop that ends above the chin, as loose real photos and face detectors give."""

    fn = staticmethod(chin_cut)


class LowLight(_SeededImageOnly):
    fn = staticmethod(low_light)



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


def _robust() -> list:
    """strong + the shifts real masks bring that the synthetic templates lack (colour, cut chins, low light)."""
    return _strong() + [LowerFaceRecolour(p=0.3), ChinCut(p=0.15), LowLight(p=0.1)]


AUGMENTATIONS = {"none": list, "light": _light, "strong": _strong, "robust": _robust}


def create_train_transform(name: str) -> A.Compose | None:
    """The named augmentation set over HxWx3 uint8 arrays, or None for 'none'."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {name!r}; valid: {sorted(AUGMENTATIONS)}")
    steps = AUGMENTATIONS[name]()
    return A.Compose(steps) if steps else None
