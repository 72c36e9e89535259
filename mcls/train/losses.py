"""Loss factory: name -> module taking (logits, target). Class weights come from the training fold."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mcls.config import Config
from mcls.labels import HEAD_SIZES, NUM_CLASSES
from mcls.model.classifier import AGE_BINS


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
        age = age.float().clamp(0, len(self.bins) - 1)
        target = (-0.5 * ((self.bins[None] - age[:, None]) / self.sigma) ** 2).softmax(-1)
        return -(target * logits.float().log_softmax(-1)).sum(-1).mean()


def inverse_frequency_weights(targets, num_classes: int) -> torch.Tensor:
    """Weights proportional to 1/count, scaled to mean 1; a class absent from training gets weight 1."""
    counts = torch.bincount(torch.as_tensor(targets, dtype=torch.long), minlength=num_classes).float()
    w = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.ones_like(counts))
    return w / w.mean()


def known_rows(loss_fn, logits, target):
    """loss_fn over the rows whose target is known (>= 0): an external face has no mask state. A batch with every
    target known is scored exactly as before; one with none known adds zero (and keeps the graph)."""
    known = target >= 0
    if bool(known.all()):
        return loss_fn(logits, target)
    if not bool(known.any()):
        return logits.float().sum() * 0.0
    return loss_fn(logits[known], target[known])


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


class TaskLoss(torch.nn.Module):
    """Weighted sum of per-head losses (three heads, shared or separate backbones) or one loss over the 18 training classes (single head).

    Targets columns: mask, gender, age_band_train, label, age (see dataset.TARGET_COLUMNS). An exact-age head
    learns the age distribution; with age_head=both the 3-way band head trains beside it at the same weight.
    """

    def __init__(self, cfg: Config, train_targets: np.ndarray):
        super().__init__()
        self.multi = cfg.heads != "single"
        self.age_head = cfg.age_head
        weighted = cfg.loss in ("weighted_ce", "focal")

        def make(targets, n):
            w = inverse_frequency_weights(targets[targets >= 0], n) if weighted else None
            return create_loss(cfg.loss, w, cfg.label_smoothing, cfg.focal_gamma)

        if self.multi:
            self.losses = torch.nn.ModuleList(make(train_targets[:, i], n) for i, n in enumerate(HEAD_SIZES.values()))
            self.weights = list(cfg.loss_weights)
            self.age_dist = AgeDistributionLoss(AGE_BINS, cfg.age_sigma)
        else:
            self.losses = torch.nn.ModuleList([make(self.train_class(train_targets), NUM_CLASSES)])

    @staticmethod
    def train_class(targets):
        """Class with the training-only age band; tensors stay tensors (labels.encode would make numpy)."""
        return 6 * targets[:, 0] + 3 * targets[:, 1] + targets[:, 2]

    def forward(self, outputs, targets):
        if not self.multi:
            return self.losses[0](outputs["class"], self.train_class(targets))
        (w_mask, w_gender, w_age), (f_mask, f_gender, f_age) = self.weights, self.losses
        total = (w_mask * known_rows(f_mask, outputs["mask"], targets[:, 0])
                 + w_gender * known_rows(f_gender, outputs["gender"], targets[:, 1]))
        if self.age_head in ("band", "both"):
            total = total + w_age * known_rows(f_age, outputs["age_band" if self.age_head == "both" else "age"],
                                               targets[:, 2])
        if self.age_head in ("dist", "both"):
            # pseudo-labelled images carry a band but no exact age
            total = total + w_age * known_rows(self.age_dist, outputs["age_dist"], targets[:, 4])
        return total
