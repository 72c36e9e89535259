"""Loss factory: name -> module taking (logits, target). Class weights come from the training fold."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """Cross-entropy scaled by (1 - p_true)^gamma, so easy examples count less; optional class weights."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits, target):
        logp = logits.float().log_softmax(-1)
        logp_t = logp.gather(1, target[:, None]).squeeze(1)
        loss = -((1 - logp_t.exp()) ** self.gamma) * logp_t
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum()
        return loss.mean()


class F1Loss(nn.Module):
    """1 - soft macro F1 over the batch: optimises the competition metric directly."""

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        self.eps = eps

    def forward(self, logits, target):
        p = logits.float().softmax(-1)
        y = F.one_hot(target, p.shape[1]).float()
        tp = (p * y).sum(0)
        precision = tp / (p.sum(0) + self.eps)
        recall = tp / (y.sum(0) + self.eps)
        f1 = 2 * precision * recall / (precision + recall + self.eps)
        return 1 - f1.mean()


class AgeDistributionLoss(nn.Module):
    """Cross-entropy against a Gaussian over one-year bins centred on the exact age (label distribution learning):
    neighbouring ages share evidence, so a 29- and a 31-year-old teach the model almost the same thing."""

    def __init__(self, num_bins: int, sigma: float = 3.0):
        super().__init__()
        self.register_buffer("bins", torch.arange(num_bins, dtype=torch.float32))
        self.sigma = sigma

    def forward(self, logits, age):
        known = age >= 0  # pseudo-labelled images carry a band but no exact age
        if not bool(known.all()):
            if not bool(known.any()):
                return logits.float().sum() * 0.0
            logits, age = logits[known], age[known]
        age = age.float().clamp(0, len(self.bins) - 1)
        target = (-0.5 * ((self.bins[None] - age[:, None]) / self.sigma) ** 2).softmax(-1)
        return -(target * logits.float().log_softmax(-1)).sum(-1).mean()


def inverse_frequency_weights(targets, num_classes: int) -> torch.Tensor:
    """Weights proportional to 1/count, scaled to mean 1; a class absent from training gets weight 1."""
    counts = torch.bincount(torch.as_tensor(targets, dtype=torch.long), minlength=num_classes).float()
    w = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.ones_like(counts))
    return w / w.mean()


LOSSES = ("ce", "weighted_ce", "focal", "label_smoothing", "f1")


def create_loss(name: str, class_weights: torch.Tensor | None = None, label_smoothing: float = 0.1,
                focal_gamma: float = 2.0) -> nn.Module:
    """`class_weights` is used by weighted_ce and focal (as alpha); the others ignore it."""
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "weighted_ce":
        return nn.CrossEntropyLoss(weight=class_weights)
    if name == "focal":
        return FocalLoss(focal_gamma, class_weights)
    if name == "label_smoothing":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if name == "f1":
        return F1Loss()
    raise ValueError(f"unknown loss {name!r}; valid: {list(LOSSES)}")
