"""The mask task's own training view (per-task models only): its backbone may see each face reframed, smaller and
off-centre inside the frame, while gender and age train on the faces as cropped.

Why: the data's crops are tight (the chin touches the bottom edge), but real photos come from detectors and margins
of every size. A mask head trained on one framing learns where the mask's top edge sits in the frame rather than
where it sits on the face, and on looser real crops (realmask-dev) reads worn masks as 'incorrect'. Age and gender
would only lose detail from a smaller face, so they keep the tight crop.

reframe_lowres adds resolution loss: half the faces are shrunk to 20-50 % of their side and blown up again. The
data's faces are sharp, while real photos are often small faces from crowd shots, and a mask head that never saw a
blurred mask reads one as a bare face.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mcls.model.classifier import unit_float

MASK_VIEWS = ("none", "reframe", "reframe_lowres")
# the face shrinks to this share of the frame's side; 0.65 is looser than realmask-dev's ~15 % margin
REFRAME_SCALE = (0.65, 1.0)
LOWRES_P = 0.5
LOWRES_SCALE = (0.2, 0.5)  # of the side: a 160 px face becomes 32-80 px, like realmask-dev's smallest crops


class MaskView:
    """Reframes a batch for the mask backbone; draws come from its own seeded generator (reseeded per epoch like the
    mixer), so runs and resumes repeat and the other tasks' randomness is untouched."""

    def __init__(self, kind: str = "none", seed: int = 0):
        if kind not in MASK_VIEWS:
            raise ValueError(f"unknown mask_view {kind!r}; valid: {MASK_VIEWS}")
        self.kind = kind
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        # a stream apart from the mixer's, which is reseeded from the same epoch seed
        self.rng = np.random.default_rng([seed, 1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The batch reframed as floats in [0, 1] (what the model reads besides uint8)."""
        if self.kind == "none":
            return x
        n = len(x)
        scale = self.rng.uniform(*REFRAME_SCALE, size=n)
        # the shrunk face stays wholly inside the frame: its centre moves at most (1 - scale) in [-1, 1] coordinates
        shift = self.rng.uniform(-1, 1, size=(n, 2)) * (1 - scale)[:, None]
        theta = np.zeros((n, 2, 3), dtype=np.float32)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
        theta[:, :, 2] = -shift / scale[:, None]
        xf = unit_float(x)
        grid = F.affine_grid(torch.from_numpy(theta).to(x.device), list(xf.shape), align_corners=False)
        # the new border is the image's mean colour: mirrored borders would repeat the mask beside the face and
        # stretched ones would lengthen it, while a flat fill says nothing about the mask state
        mean = xf.mean(dim=(2, 3), keepdim=True)
        out = (F.grid_sample(xf - mean, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + mean
               ).clamp(0, 1)
        if self.kind == "reframe_lowres":
            out = self.lowres(out)
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    def lowres(self, x: torch.Tensor) -> torch.Tensor:
        """A share LOWRES_P of the batch shrunk and blown up again (per image: each draws its own size)."""
        side = x.shape[-1]
        hit = self.rng.random(len(x)) < LOWRES_P
        small = np.round(side * self.rng.uniform(*LOWRES_SCALE, size=len(x))).astype(int)
        out = x.clone()
        for i in np.flatnonzero(hit):
            low = F.interpolate(x[i:i + 1], size=(small[i], small[i]), mode="bilinear", antialias=True,
                                align_corners=False)
            out[i:i + 1] = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)
        return out
