"""Device, mixed precision and memory format, decided once; seeding."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from mcls.config import ConfigError
from mcls.runtime import distributed


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", distributed.local_rank()) if distributed.active() else torch.device("cuda")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device torch knows; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: torch {torch.__version__} sees no CUDA GPU on this machine; use "
                          "device=auto (GPU when there is one) or device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                          f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device



AMP_DTYPES = ("auto", "bfloat16", "float16")


class Runtime:
    """Device, mixed precision and memory format, decided once. AMP acts on CUDA only (on CPU bfloat16 sped the face
    backbone, slowed the mask one and is not judged on quality: bench/results/cpu_formats.md); channels_last acts
    on both. `amp_dtype` auto takes bfloat16 where the GPU has it, else float16, which trains with a loss scaler."""

    def __init__(self, device: str = "auto", amp: bool = True, channels_last: str = "auto", amp_dtype: str = "auto"):
        self.device = select_device(device)
        cuda = self.device.type == "cuda"
        self.amp_dtype = None
        if cuda and amp:
            if amp_dtype == "auto":
                amp_dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
            self.amp_dtype = getattr(torch, amp_dtype)
        # auto is on everywhere: on this project's 2-core CPU it took a default fold's training step from 1.39 s to
        # 0.99 s (bench/results/profile_fold.md), and GPUs' convolution kernels want it too
        self.channels_last = channels_last in ("on", "auto")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.pin_memory = cuda

    @classmethod
    def from_config(cls, cfg) -> "Runtime":
        return cls(cfg.device, cfg.amp, cfg.channels_last, cfg.amp_dtype)

    def describe(self) -> str:
        """One line for logs: where and how the model runs."""
        amp = f"AMP {str(self.amp_dtype).removeprefix('torch.')}" if self.amp_dtype is not None else "no AMP"
        scaler = " + loss scaling" if self.scaler.is_enabled() else ""
        memory = ", channels_last" if self.channels_last else ""
        return f"{self.device} ({amp}{scaler}{memory})"

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
