"""The task's label algebra: mask state, gender and age band, and the 18 classes they combine into."""
from __future__ import annotations

import numpy as np

MASK_STATES = ("wear", "incorrect", "not wear")
GENDERS = ("male", "female")
HEADS = ("mask", "gender", "age")
HEAD_SIZES = {"mask": 3, "gender": 2, "age": 3}
NUM_CLASSES = 18
PROB_COLUMNS = [f"p{k}" for k in range(NUM_CLASSES)]  # the class probabilities in every predictions CSV

# File stem -> mask state, as the competition names a person's seven photos.
FILE_MASK = {"mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0, "incorrect_mask": 1, "normal": 2}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def age_band(age, bounds=(30, 60)):
    """0 for age < bounds[0], 1 for bounds[0] <= age < bounds[1], 2 above; works on scalars and arrays."""
    return np.searchsorted(np.asarray(bounds), np.asarray(age), side="right")


def age_band_names(bounds=(30, 60)) -> tuple[str, str, str]:
    lo, hi = bounds
    return (f"<{lo}", f"{lo}-{hi - 1}", f">={hi}")


def encode(mask, gender, band):
    """Class = 6 * mask + 3 * gender + age band."""
    return 6 * np.asarray(mask) + 3 * np.asarray(gender) + np.asarray(band)


def decode(label):
    """Class -> (mask, gender, age band)."""
    label = np.asarray(label)
    return label // 6, (label // 3) % 2, label % 3


def class_names(bounds=(30, 60)) -> list[str]:
    ages = age_band_names(bounds)
    return [f"{MASK_STATES[m]}/{GENDERS[g]}/{ages[a]}" for m in range(3) for g in range(2) for a in range(3)]


def near_edge(ages: np.ndarray, edges, years: int) -> np.ndarray:
    """True for ages within `years` below an edge (edge - years .. edge - 1): labels a year or two from the next
    band are the noisiest (and UTKFace's ages are guesses), so training may leave them out. Never applied to
    validation, whose labels are the competition's."""
    ages = np.asarray(ages)
    out = np.zeros(len(ages), dtype=bool)
    if years > 0:
        for edge in edges:
            out |= (ages >= edge - years) & (ages < edge)
    return out
