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
