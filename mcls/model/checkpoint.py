"""Checkpoints: best.pt rebuilds its model alone (the config is stored inside); last.pt holds everything a fold
needs to resume exactly."""
from __future__ import annotations

from pathlib import Path

import torch

from mcls.config import Config
from mcls.errors import UserError
from mcls.io import save_torch
from mcls.model.classifier import MaskClassifier, model_from_config


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def read_checkpoint(path: str | Path, device="cpu", fix: str = "restore it or train again",
                    keys: tuple[str, ...] = ("model", "config")) -> dict:
    """The checkpoint's dict, or one sentence: which file, what is wrong (missing, truncated, not mcls's), `fix`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # a truncated zip, a foreign pickle, a text file: torch raises many types
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or not written by mcls "
                              f"({type(err).__name__}); {fix}") from None
    missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not an mcls checkpoint (no {', '.join(missing)}); {fix}")
    return ckpt


def load_checkpoint(path: str | Path, device="cpu") -> tuple[MaskClassifier, Config]:
    """Rebuilds the model from the config stored inside the checkpoint (no weights are fetched)."""
    path = Path(path)
    ckpt = read_checkpoint(path, device, fix="train that fold again (mcls train --resume) or restore the file")
    cfg = Config.from_dict(ckpt["config"], source=str(path))
    model = model_from_config(cfg, pretrained="none")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit backbone {cfg.backbone!r} / heads {cfg.heads!r}: "
                              f"{str(err).splitlines()[0]}") from None
    return model.to(device).eval(), cfg


def save_best(path: str | Path, model: torch.nn.Module, cfg: Config, metrics: dict) -> None:
    """The weights to ship, with the config that rebuilds their model and the epoch's metrics."""
    save_torch(path, {"model": model.state_dict(), "config": cfg.to_dict(), "epoch": metrics["epoch"],
                      "metrics": metrics})


def save_training_state(path: str | Path, parts: dict, state: dict, cfg: Config) -> None:
    """Every part's state_dict (None for an absent part, e.g. no EMA), the loop's state and the config."""
    save_torch(path, {**{k: v.state_dict() if v is not None else None for k, v in parts.items()}, "state": state,
                      "config": cfg.to_dict()})


def load_training_state(path: str | Path, parts: dict, device) -> dict:
    """Loads each part's state_dict from `path` in place; returns the loop's state."""
    ckpt = read_checkpoint(path, device, keys=("state",),
                           fix="delete it and resume again to restart this fold from its first epoch, or restore it")
    for name, part in parts.items():
        if part is not None:
            part.load_state_dict(ckpt[name])
    return ckpt["state"]


# The face-weights file: a face backbone and its heads, pretrained once (mcls.train.pretrain) and loaded by every
# fold's gender and age tasks. FACE_HEADS are the heads a face backbone feeds, as MaskClassifier names them.
FACE_HEADS = ("gender", "age", "age_band", "age_dist")


def face_weights(model, backbone_name: str) -> dict:
    """What a face-weights file holds: the face backbone's and face heads' state dicts, on the CPU."""
    return {"backbone_name": backbone_name, "backbone": _cpu(model.face_backbone().state_dict()),
            "heads": {h: _cpu(model.heads[h].state_dict()) for h in FACE_HEADS if h in model.heads}}


def load_face_weights(model, path) -> None:
    """Starts `model`'s gender and age tasks from a pretrained face backbone file: every backbone that feeds a face
    head takes its weights, and each face head the file holds; the mask task (head and own backbone) is left alone.
    Raises one sentence naming the file when its backbone is another architecture."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    face_heads = [h for h in FACE_HEADS if h in model.heads]
    backbones = {id(model.backbone_for(h)): model.backbone_for(h) for h in face_heads or ["class"]}
    try:
        for net in backbones.values():
            net.load_state_dict(saved["backbone"])
        for h in face_heads:
            if h in saved["heads"]:
                model.heads[h].load_state_dict(saved["heads"][h])
    except RuntimeError as err:
        raise UserError(f"{path}: a pretrained {saved['backbone_name']} backbone does not fit this model "
                        f"({str(err).splitlines()[0]}); delete it to pretrain again") from None


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in state.items()}
