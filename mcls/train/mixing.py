"""Batch mixing for training: vertical CutMix (left part of one face, right part of another; at a Beta-drawn cut or,
vcutmix_fixed, at 46-54% of the width), CutMix, Mixup.

A mixed batch is scored as lam * loss(y) + (1 - lam) * loss(y_other), so every loss and head works unchanged.
With tasks="mask" (per-task models only) the mask task's backbone alone sees the mixed batch: a face cut from two
people still shows each side's mask, but its age and gender are no one's, so those tasks train on the clean batch
and y_other differs from y in the mask column only (their two loss terms then add up to the plain loss).
"""
from __future__ import annotations

import numpy as np
import torch

from mcls.data.dataset import TARGET_COLUMNS
from mcls.model.classifier import unit_float

MIXES = ("none", "vcutmix", "vcutmix_fixed", "cutmix", "mixup")
# vcutmix_fixed: the documented winner's left/right cut, always near the middle of the face
FIXED_CUT = (0.46, 0.54)
MIX_TASKS = ("all", "mask")
MASK_COLUMN = TARGET_COLUMNS.index("mask")


class BatchMixer:
    """Mixes a share `prob` of batches; draws come from its own seeded generator, so runs and resumes repeat."""

    def __init__(self, kind: str = "none", prob: float = 0.5, alpha: float = 1.0, seed: int = 0, tasks: str = "all"):
        if kind not in MIXES:
            raise ValueError(f"unknown mix {kind!r}; valid: {MIXES}")
        if tasks not in MIX_TASKS:
            raise ValueError(f"unknown mix_tasks {tasks!r}; valid: {MIX_TASKS}")
        self.kind, self.prob, self.alpha, self.tasks = kind, prob, alpha, tasks
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def batch(self, x: torch.Tensor, y: torch.Tensor):
        """(model input, per-task inputs or None, partner targets or None, lam) for one training batch; the model is
        called as model(x, task_inputs) and scored lam * loss(out, y) + (1 - lam) * loss(out, y_other)."""
        mixed, perm, lam = self(x, known_mask=y[:, MASK_COLUMN] >= 0)
        if perm is None:
            return x, None, None, 1.0
        if self.tasks == "all":
            return mixed, None, y[perm], lam
        y_other = y.clone()
        y_other[:, MASK_COLUMN] = y[perm, MASK_COLUMN]
        return x, {"mask": mixed}, y_other, lam

    def __call__(self, x: torch.Tensor, known_mask: torch.Tensor | None = None):
        """Returns (mixed x, perm, lam), or (x, None, 1.0) when this batch is not mixed; lam is the share of x.
        With `known_mask` (rows whose mask state is known), a row is mixed only with a row of its own kind."""
        if self.kind == "none" or len(x) < 2 or self.rng.random() >= self.prob:
            return x, None, 1.0
        known = None if known_mask is None else known_mask.cpu().numpy()
        perm = torch.from_numpy(self._permutation(len(x), known)).to(x.device)
        lam = float(self.rng.beta(self.alpha, self.alpha))
        h, w = x.shape[-2:]
        if self.kind == "mixup":
            xf = unit_float(x)
            return lam * xf + (1 - lam) * xf[perm], perm, lam
        x = x.clone()
        if self.kind in ("vcutmix", "vcutmix_fixed"):
            # a vertical cut keeps both faces' eyes and mouths; the mask state still shows on each side
            share = float(self.rng.uniform(*FIXED_CUT)) if self.kind == "vcutmix_fixed" else lam
            cut = int(round(w * share))
            x[..., cut:] = x[perm][..., cut:]
            return x, perm, cut / w
        ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        cy, cx = int(self.rng.integers(h)), int(self.rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        return x, perm, 1 - (y1 - y0) * (x1 - x0) / (h * w)

    def _permutation(self, n: int, known: np.ndarray | None) -> np.ndarray:
        """Each row's partner. An external face (no mask state) is paired only with another: pasted into a
        competition photo it would teach that photo's mask label on an unmasked face (joint training)."""
        if known is None or known.all() or not known.any():
            return self.rng.permutation(n)
        perm = np.arange(n)
        for rows in (np.flatnonzero(known), np.flatnonzero(~known)):
            perm[rows] = rows[self.rng.permutation(len(rows))]
        return perm
