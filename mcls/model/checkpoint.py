"""Checkpoints that rebuild their model alone: the config is stored inside."""
from __future__ import annotations

from pathlib import Path

import torch

from mcls.config import Config
from mcls.model.classifier import MaskClassifier, model_from_config


def load_checkpoint(path: str | Path, device="cpu") -> tuple[MaskClassifier, Config]:
    """Rebuilds the model from the config stored inside the checkpoint (no weights are fetched)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    ckpt = torch.load(path, map_location=device, weights_only=False)
    cfg = Config.from_dict(ckpt["config"], source=str(path))
    model = model_from_config(cfg, pretrained="none")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit backbone {cfg.backbone!r} / heads {cfg.heads!r}: "
                         f"{str(err).splitlines()[0]}") from None
    return model.to(device).eval(), cfg
