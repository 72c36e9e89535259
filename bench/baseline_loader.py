"""A faithful minimal copy of the competition baseline's data loading, for bench/speed.py only.

The baseline opened every image with PIL in __getitem__, every epoch, and ran torchvision transforms
(Resize, ToTensor, Normalize) on it; nothing was cached. Its Resize target here is the benchmark's square size.
The mcls model normalises its input again inside; that costs the same for every row and only timing is measured.
"""
from __future__ import annotations

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

BASELINE_MEAN, BASELINE_STD = (0.548, 0.504, 0.479), (0.237, 0.247, 0.246)


class BaselineDataset(Dataset):
    def __init__(self, table, size: int, targets):
        self.paths, self.targets = list(table["path"]), targets
        self.transform = transforms.Compose([transforms.Resize((size, size), Image.BILINEAR), transforms.ToTensor(),
                                             transforms.Normalize(mean=BASELINE_MEAN, std=BASELINE_STD)])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = Image.open(self.paths[i]).convert("RGB")
        return self.transform(image), torch.as_tensor(self.targets[i]), i
