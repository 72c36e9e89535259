"""A torch Dataset over a uint8 image array; batches stay uint8 until they reach the device."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

TARGET_COLUMNS = ("mask", "gender", "age_band_train", "label", "age")


class ImageArrayDataset(Dataset):
    """Items are (CHW uint8 tensor, targets[4] long tensor, row index); targets are -1 when unlabelled."""

    def __init__(self, images: np.ndarray, targets: np.ndarray | None = None, transform=None, seed: int = 0):
        self.images, self.transform, self.seed = images, transform, seed
        self.targets = targets if targets is not None else np.full((len(images), len(TARGET_COLUMNS)), -1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item):
        """`item` is a row, or (row, epoch seed) from a training sampler."""
        i, seed = item if isinstance(item, tuple) else (item, self.seed)
        img = self.images[i]
        if self.transform is not None:
            # Seeding per (epoch seed, item) makes augmentation independent of worker count and of resuming.
            self.transform.set_random_seed((seed * 1_000_003 + int(i)) % 2**32)
            img = self.transform(image=img)["image"]
        x = torch.from_numpy(np.array(img, copy=not img.flags.writeable)).permute(2, 0, 1)
        return x, torch.as_tensor(self.targets[i], dtype=torch.long), i


def targets_of(table) -> np.ndarray:
    return table[list(TARGET_COLUMNS)].to_numpy(dtype=np.int64)


def balanced_weights(targets: np.ndarray) -> np.ndarray:
    """Per-item sampling weights that draw each gender x training-age-band cell equally often (the >=60 cells are
    a tenth of the others); mask states keep their natural 5:1:1 mix, which every person has."""
    cell = targets[:, 1] * 3 + targets[:, 2]
    counts = np.bincount(cell, minlength=6).astype(float)
    return 1.0 / counts[cell]


def epoch_rows(targets: np.ndarray, persons: np.ndarray, wear_per_person: int, seed: int) -> np.ndarray:
    """Rows trained on this epoch: every incorrect / not-wear photo, and `wear_per_person` of each person's five
    correctly-worn ones, redrawn each epoch. The five differ only in the mask drawn over the same face, so an epoch
    costs less for little lost signal, and the mask head meets its states 2:1:1 instead of 5:1:1. Rows with no
    person (pseudo-labelled, persons < 0) are all kept."""
    rows = np.arange(len(targets))
    if wear_per_person >= 5:
        return rows
    priority = np.random.default_rng(seed).random(len(targets))
    wear = (targets[:, 0] == 0) & (persons >= 0)
    order = np.lexsort((priority, persons))  # by person, then by random priority
    rank = np.zeros(len(targets), dtype=int)
    sorted_persons = persons[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_persons)) + 1]
    wear_sorted = wear[order]
    for a, b in zip(starts, np.r_[starts[1:], len(order)]):
        rank[order[a:b][wear_sorted[a:b]]] = np.arange(wear_sorted[a:b].sum())
    return rows[~wear | (rank < wear_per_person)]


def epoch_order(targets: np.ndarray, seed: int, sampler: str = "uniform", persons: np.ndarray | None = None,
                wear_per_person: int = 5) -> np.ndarray:
    """The order of one training epoch, a function of the seed alone (so every DDP rank draws the same one):
    a permutation (uniform) or a same-length weighted draw with replacement (balanced) of epoch_rows."""
    rows = epoch_rows(targets, persons, wear_per_person, seed) if persons is not None else np.arange(len(targets))
    g = torch.Generator().manual_seed(seed)
    if sampler == "balanced":
        w = torch.as_tensor(balanced_weights(targets[rows]))
        return rows[torch.multinomial(w, len(rows), replacement=True, generator=g).numpy()]
    if sampler != "uniform":
        raise ValueError(f"unknown sampler {sampler!r}; valid: uniform, balanced")
    return rows[torch.randperm(len(rows), generator=g).numpy()]


def make_loader(dataset: Dataset, batch_size: int, train: bool, num_workers: int = 0, seed: int = 0,
                pin_memory: bool = False, sampler=None) -> DataLoader:
    """Training loaders shuffle with a seeded generator unless given a `sampler` (an epoch order);
    evaluation loaders never shuffle and never drop a row."""
    generator = torch.Generator().manual_seed(seed) if train else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      drop_last=False, num_workers=num_workers, generator=generator, pin_memory=pin_memory,
                      persistent_workers=train and num_workers > 0,
                      worker_init_fn=_seed_worker if num_workers else None)


def _seed_worker(worker_id: int) -> None:
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
