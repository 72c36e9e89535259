"""timm backbone + task heads. The model owns its input normalisation, so a checkpoint is all inference needs."""
from __future__ import annotations

import warnings

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from mcls.errors import UserError
from mcls.labels import HEAD_SIZES, NUM_CLASSES, age_band, decode
from mcls.model.weights import (
    REGISTRY,
    has_offline_weights,
    load_offline_weights,
    warn_no_offline_weights,
)

HEAD_TYPES = ("multi", "single", "separate", "mask_apart")
TASKS = ("mask", "gender", "age")
# Models with more than one backbone: which backbone (by name) each task reads. "mask" is always the mask task's own,
# so mask_backbone, mask_size, mix_tasks and mask_view act on every one of them.
TASK_BACKBONES = {
    "separate": {"mask": "mask", "gender": "gender", "age": "age"},  # one backbone per task
    # the mask task in a small backbone of its own (reframed, mixed, at mask_size), gender and age sharing one face
    # backbone at img_size: the mask task's view and mixing help it and would cost gender and age on a shared one
    "mask_apart": {"mask": "mask", "gender": "face", "age": "face"},
}
# Every model is such a table over one ModuleDict; a one-backbone model is the table with one entry.
SHARED = "all"
ONE_BACKBONE_TASKS = {"multi": {t: SHARED for t in TASKS}, "single": {"class": SHARED}}


AGE_HEADS = ("band", "dist", "both")
AGE_BINS = 100  # one bin per year of age 0..98, the last for 99 and over


def unit_float(x: torch.Tensor) -> torch.Tensor:
    """Images as floats in [0, 1], the one scale the model, the mixers and the views share: uint8 is divided by
    255, floats are taken as already scaled."""
    return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()


def age_bin_bands(age_bounds=(30, 60)) -> torch.Tensor:
    """(AGE_BINS,) band index of each one-year age bin."""
    return torch.as_tensor(age_band(np.arange(AGE_BINS), age_bounds), dtype=torch.long)


class MaskClassifier(nn.Module):
    """Takes images as uint8 or float in [0, 1], NCHW; returns a dict of logits per head.

    heads="multi": {"mask": (N,3), "gender": (N,2), "age": (N,3)} from one backbone; heads="single":
    {"class": (N,18)}; heads="separate" and "mask_apart": the multi outputs from several backbones. Every kind is
    one table, `groups` (task -> backbone name), over one ModuleDict `backbones`: {"all": net} for one backbone,
    else keyed by the names in TASK_BACKBONES (one per task, or the mask task's and a "face" one for gender and age);
    the mask one may be another architecture and see the image at `mask_size` px, since mask state needs far less
    detail than age. With an exact-age head (age_head dist or both) the outputs add "age_dist"
    (N, AGE_BINS) logits over years (and "age_band", the 3-way logits, for both); "age" is then the band
    log-probabilities they imply, so everything downstream of the model sees three heads as usual.
    """

    def __init__(self, backbone: nn.Module | dict[str, nn.Module], heads: str, mean, std, drop_rate: float = 0.0,
                 age_head: str = "band", age_bounds=(30, 60), mask_size: int = 0, mask_norm=None):
        super().__init__()
        if heads not in HEAD_TYPES:
            raise ValueError(f"unknown heads {heads!r}; valid: {HEAD_TYPES}")
        if age_head not in AGE_HEADS or (heads == "single" and age_head != "band"):
            raise ValueError(f"age_head {age_head!r} is not one of {AGE_HEADS} (an exact-age head needs three heads)")
        self.groups = {**ONE_BACKBONE_TASKS, **TASK_BACKBONES}[heads]
        nets = backbone if isinstance(backbone, dict) else {SHARED: backbone}
        if set(nets) != set(self.groups.values()):
            raise ValueError(f"heads={heads!r} takes backbones keyed {sorted(set(self.groups.values()))}, got "
                             f"{sorted(nets)}")
        self.head_type, self.age_head, self.mask_size = heads, age_head, mask_size
        self.backbones = nn.ModuleDict(nets)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        if "mask" in self.backbones:  # the mask backbone may have been trained with another normalisation
            m, sd = mask_norm or (mean, std)
            self.register_buffer("mask_mean", torch.tensor(m, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("mask_std", torch.tensor(sd, dtype=torch.float32).view(1, 3, 1, 1))
        sizes = dict(HEAD_SIZES) if heads != "single" else {"class": NUM_CLASSES}
        if age_head != "band":
            sizes["age_dist"] = AGE_BINS
            if age_head == "dist":
                del sizes["age"]
        self.dropout = nn.Dropout(drop_rate)
        self.heads = nn.ModuleDict({k: nn.Linear(self.backbone_for(k).num_features, n) for k, n in sizes.items()})
        # derived from the config stored beside the weights, so not part of the state dict
        self.register_buffer("bin_band", age_bin_bands(age_bounds), persistent=False)
        self.register_load_state_dict_pre_hook(_one_table)

    def task_of(self, head: str) -> str:
        """The name of the backbone whose features a head reads ("age_dist" and "age_band" read the age task's;
        any head of a one-backbone model, "class" included, reads the shared one)."""
        name = self.groups.get("age" if head.startswith("age") else head)
        return name or (SHARED if SHARED in self.backbones else head)

    def backbone_for(self, head: str) -> nn.Module:
        """The backbone whose features a head reads."""
        task = self.task_of(head)
        if task not in self.backbones:
            raise ValueError(f"a model of several backbones (heads={self.head_type!r}) has one for each of the "
                             f"tasks {TASKS}, none for {head!r}: pick one of those heads")
        return self.backbones[task]

    def face_backbone(self) -> nn.Module:
        """The backbone gender and age read (the shared one of a one-backbone model)."""
        return self.backbone_for("gender" if "gender" in self.groups else "class")

    def normalise(self, x: torch.Tensor, task: str = "") -> torch.Tensor:
        x = unit_float(x)
        if task == "mask" and "mask" in self.backbones:
            return (x - self.mask_mean) / self.mask_std
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor, task_inputs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Pooled features per backbone name; `task_inputs` gives a backbone its own batch in place of x (training
        mixes the mask task's images only, train.mixing)."""
        stray = sorted(set(task_inputs or {}) - set(self.backbones))
        if stray:
            raise ValueError(f"per-task inputs {stray} need a mask backbone of its own (heads='separate' or "
                             f"'mask_apart')")
        out = {}
        for task, net in self.backbones.items():
            xt = self.normalise((task_inputs or {}).get(task, x), task)
            if task == "mask" and self.mask_size and self.mask_size != xt.shape[-1]:
                xt = F.interpolate(xt, size=(self.mask_size, self.mask_size), mode="bilinear", antialias=True,
                                   align_corners=False)
            out[task] = self.dropout(net(xt))
        return out

    def forward(self, x: torch.Tensor, task_inputs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        feats = self.features(x, task_inputs)
        out = {k: head(feats[self.task_of(k)]) for k, head in self.heads.items()}
        if self.age_head != "band":
            p_bin = out["age_dist"].float().softmax(-1)
            p_band = torch.zeros(len(p_bin), 3, device=p_bin.device).index_add_(1, self.bin_band, p_bin)
            if self.age_head == "both":
                out["age_band"] = out.pop("age")
                p_band = (p_band + out["age_band"].float().softmax(-1)) / 2
            out["age"] = p_band.clamp_min(1e-8).log()
        return out


def _one_table(module, state_dict, prefix, *args) -> None:
    """Checkpoints from before the one table (until 2026-12-07) kept a one-backbone model's network as `backbone.`:
    their weights load as its one entry."""
    old = f"{prefix}backbone."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[f"{prefix}backbones.{SHARED}.{key[len(old):]}"] = state_dict.pop(key)


_MASK, _GENDER, _AGE = (torch.as_tensor(a) for a in decode(torch.arange(NUM_CLASSES).numpy()))


def class_log_probs(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, 18) log-probabilities; three heads combine as log p(mask) + log p(gender) + log p(age)."""
    if "class" in outputs:
        return outputs["class"].float().log_softmax(-1)
    lm, lg, la = (outputs[k].float().log_softmax(-1) for k in ("mask", "gender", "age"))
    dev = lm.device
    return lm[:, _MASK.to(dev)] + lg[:, _GENDER.to(dev)] + la[:, _AGE.to(dev)]


def head_probs(class_probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-head marginals of an (N, 18) probability table."""
    p = class_probs.view(-1, 3, 2, 3)
    return {"mask": p.sum((2, 3)), "gender": p.sum((1, 3)), "age": p.sum((1, 2))}


def _timm_backbone(backbone: str, pretrained: str) -> tuple[nn.Module, tuple, tuple]:
    """A pooled-feature timm network with `pretrained` weights and the input mean/std those weights expect."""
    if backbone not in timm.list_models():
        close = timm.list_models(f"*{backbone[:6]}*")[:10]
        raise UserError(f"unknown backbone {backbone!r}; similar timm names: {close}")
    mode = pretrained
    if mode == "offline" and not has_offline_weights(backbone):
        warn_no_offline_weights(backbone)
        mode = "none"
    net = timm.create_model(backbone, pretrained=(mode == "timm"), num_classes=1000 if mode == "offline" else 0)
    data_cfg = timm.data.resolve_model_data_config(net)
    mean, std = data_cfg["mean"], data_cfg["std"]
    if mode == "offline":
        entry = load_offline_weights(net, backbone)
        mean, std = entry.mean, entry.std
        net.reset_classifier(0)
    elif mode not in ("timm", "none"):
        state = torch.load(mode, map_location="cpu", weights_only=True)
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches raise even with strict=False
            missing, unexpected = [str(err).splitlines()[1].strip()], []
        if missing:
            raise UserError(f"{mode}: weights do not fit backbone {backbone!r}: {missing[:3]}")
        if unexpected:
            warnings.warn(f"{mode}: ignored keys not in {backbone}: {unexpected[:5]}", stacklevel=2)
    return net, tuple(mean), tuple(std)


def create_model(backbone: str = "tf_efficientnet_lite0", heads: str = "multi", pretrained: str = "offline",
                 drop_rate: float = 0.2, age_head: str = "band", age_bounds=(30, 60), mask_backbone: str = "",
                 mask_size: int = 0) -> MaskClassifier:
    """Builds a MaskClassifier; `pretrained` is offline | timm | none | a path to a state_dict of the backbone.

    heads="separate" builds one backbone per task, "mask_apart" one for the mask task and one for gender and age
    (TASK_BACKBONES); the mask task's is `mask_backbone` ("" = the same architecture) at `mask_size` px (0 = the
    input's size).
    """
    if heads not in TASK_BACKBONES:
        net, mean, std = _timm_backbone(backbone, pretrained)
        return MaskClassifier({SHARED: net}, heads, mean, std, drop_rate, age_head, age_bounds)
    nets, norms = {}, {}
    for key in dict.fromkeys(TASK_BACKBONES[heads].values()):
        name = mask_backbone if key == "mask" and mask_backbone else backbone
        nets[key], *norms[key] = _timm_backbone(name, pretrained)
    face = TASK_BACKBONES[heads]["age"]
    return MaskClassifier(nets, heads, *norms[face], drop_rate, age_head, age_bounds, mask_size, norms["mask"])


def model_from_config(cfg, pretrained: str | None = None) -> MaskClassifier:
    """The model a config describes; `pretrained` overrides cfg.pretrained (checkpoints load their own weights)."""
    return create_model(cfg.backbone, cfg.heads, cfg.pretrained if pretrained is None else pretrained,
                        cfg.drop_rate, cfg.age_head, tuple(cfg.age_bounds), cfg.mask_backbone, cfg.mask_size)


def offline_backbones() -> list[str]:
    return sorted(REGISTRY)
