"""The weight average that is validated, kept and shipped: an EMA whose decay warms up.

A fixed decay of 0.995 over a short run (the sample's demo makes ~10 optimizer steps) ships weights that are ~95%
the initial ones, and in a full run it drags early epochs' validation towards the start and so biases the choice
of the best epoch. As in timm's ModelEmaV3, the decay of the t-th update is 1 - (1 + t) ** -power, capped at the
configured decay: a near-plain copy at first, an average of ever more steps later. t is the AveragedModel's own
n_averaged buffer, saved in last.pt, so a resumed run continues the same ramp.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

# 3/4 suits runs of thousands of steps rather than millions (the decay reaches 0.99 after ~460 updates and 0.995
# after ~1,170).
WARMUP_POWER = 0.75


def warmup_decay(step, decay: float, power: float = WARMUP_POWER):
    """The decay applied at update `step` (>= 1: the first update copies the weights): min(decay, 1-(1+t)^-p)."""
    return torch.clamp(1 - (1 + torch.as_tensor(step, dtype=torch.float32)) ** -power, max=decay)


def ema_model(net: nn.Module, decay: float, power: float = WARMUP_POWER) -> AveragedModel:
    """An AveragedModel of `net` (parameters and buffers) averaged with the warmed-up decay."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], step: torch.Tensor) -> None:
        if torch.is_floating_point(averaged[0]):
            # a tensor weight: no host sync per step on a GPU
            torch._foreach_lerp_(averaged, current, 1 - warmup_decay(step, decay, power).to(averaged[0].device))
        else:  # integer buffers (BatchNorm's batch counters) are counts, not weights
            for a, c in zip(averaged, current):
                a.copy_(c)

    return AveragedModel(net, multi_avg_fn=update, use_buffers=True)
