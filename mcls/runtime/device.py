"""Device, mixed precision and memory format, decided once; seeding."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from mcls.config import Config
from mcls.runtime import distributed


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", distributed.local_rank()) if distributed.active() else torch.device("cuda")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} asked for, but torch sees no CUDA GPU")
    return device



class Runtime:
    """Device, mixed precision and memory format, decided once from the config."""

    def __init__(self, cfg: Config):
        self.device = select_device(cfg.device)
        cuda = self.device.type == "cuda"
        self.amp_dtype = None
        if cuda and cfg.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and cuda)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.pin_memory = cuda

    def eval_batch(self, train_batch: int) -> int:
        """Images per inference forward pass, flipped TTA copies included. On CPU larger batches are slower per
        image (lite0 at 112 px: 237 img/s at 32, 188 at 64, 156 at 128), so inference keeps the training batch;
        GPUs want more."""
        return train_batch * 4 if self.device.type == "cuda" else train_batch

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model



def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
