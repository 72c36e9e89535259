"""Where each head looks: class activation maps (pytorch-grad-cam) for any timm backbone, as overlays and as a number.

The number is the share of CAM energy (the sum of the map's values) inside a box. The face box is the whole image
while `crop=none` (the images are face crops already), which scores 1.0 by construction, so the central part of
the box and the lower half of each box are reported too; `area_share` says what a flat map would score.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from pytorch_grad_cam import (
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    RandomCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from mcls.errors import UserError
from mcls.labels import HEAD_SIZES, HEADS, NUM_CLASSES
from mcls.model.classifier import class_log_probs, unit_float

METHODS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "gradcam-elementwise": GradCAMElementWise,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "scorecam": ScoreCAM,  # one forward pass per channel of the target layer: slow
    "random": RandomCAM,  # a baseline: its energy shares are what chance looks like
}
TARGETS = HEADS + ("class",)


def get_method(name: str):
    """The pytorch-grad-cam class registered under `name` (see METHODS)."""
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise UserError(f"unknown CAM method {name!r}; valid: {', '.join(METHODS)}") from None


# ------------------------------------------------------------------------------------------------- model side
def find_target_layer(backbone: nn.Module, input_size=(224, 224)) -> tuple[nn.Module, str]:
    """(layer, layout) for a timm backbone: the module to explain and its output layout, "NCHW", "NHWC" or "tokens".

    CNNs (and Swin) use the module that produces the final feature map, found by one probe pass at `input_size`.
    ViT-like models use the last block's norm1: with class-token pooling the final norm's patch tokens get no
    gradient, so a CAM there would be blank.
    """
    if _is_vit(backbone):
        return backbone.blocks[-1].norm1, "tokens"
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, o))) for n, m in backbone.named_modules() if n]
    p = next(backbone.parameters())
    try:
        with torch.no_grad():
            feats = backbone.forward_features(torch.zeros(1, 3, *input_size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    producers = [m for m, o in seen if o is feats]
    if not producers:
        raise UserError(f"{type(backbone).__name__}: no module outputs the final feature map; pass target_layer=")
    if feats.ndim == 3:
        return producers[-1], "tokens"
    return producers[-1], _layout(backbone)


def _is_vit(backbone) -> bool:
    return all(hasattr(backbone, a) for a in ("patch_embed", "blocks", "num_prefix_tokens"))


def _layout(backbone) -> str:
    return "tokens" if _is_vit(backbone) else "NHWC" if getattr(backbone, "output_fmt", "") == "NHWC" else "NCHW"


class HeadView(nn.Module):
    """An mcls model seen as one output tensor, which is what a CAM target indexes.

    head: "mask" | "gender" | "age" (that head's logits; for a single-head model its marginal log-probabilities)
    or "class" (the 18-class log-probabilities).
    """

    def __init__(self, model: nn.Module, head: str, target_layer: nn.Module | None = None, input_size=(224, 224)):
        super().__init__()
        if head not in TARGETS:
            raise ValueError(f"unknown head {head!r}; valid: {TARGETS}")
        self.model, self.head = model, head
        # a per-task model explains the 18 classes through no single layer: backbone_for refuses "class" there
        backbone = model.backbone_for(head)
        if target_layer is None:
            self.layer, self.layout = find_target_layer(backbone, input_size)
        else:
            self.layer, self.layout = target_layer, _layout(backbone)
        self.patch_embed = getattr(backbone, "patch_embed", None)
        self.num_prefix = getattr(backbone, "num_prefix_tokens", 0)
        self.input_hw = tuple(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input_hw = tuple(x.shape[-2:])
        out = self.model(x)
        if self.head in out:
            return out[self.head]
        log_p = class_log_probs(out).view(-1, 3, 2, 3)  # single-head model: marginalise the 18 classes
        if self.head == "class":
            return log_p.flatten(1)
        keep = {"mask": 1, "gender": 2, "age": 3}[self.head]
        return log_p.logsumexp(tuple(d for d in (1, 2, 3) if d != keep))

    @property
    def reshape_transform(self):
        return {"NCHW": None, "NHWC": lambda a: a.permute(0, 3, 1, 2), "tokens": self.tokens_to_map}[self.layout]

    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, prefix + h*w, C) -> (N, C, h, w) with the grid of the input just seen, never an assumed 14x14."""
        n = tokens.shape[1] - self.num_prefix
        if hasattr(self.patch_embed, "dynamic_feat_size"):
            h, w = self.patch_embed.dynamic_feat_size(self.input_hw)
        else:  # no patch embedding to ask: the grid keeps the input's aspect ratio
            h = round(math.sqrt(n * self.input_hw[0] / self.input_hw[1]))
            w = n // max(h, 1)
        if h * w != n:
            raise ValueError(f"{n} patch tokens do not form a grid for input {self.input_hw} (got {h}x{w})")
        return tokens[:, self.num_prefix:].reshape(len(tokens), h, w, -1).permute(0, 3, 1, 2)


def as_input(images) -> torch.Tensor:
    """Float NCHW in [0, 1] from a uint8 (N, H, W, 3) array (as load_images gives) or an NCHW uint8/float tensor."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return unit_float(images)


def iter_cam_maps(model, images, head: str = "class", classes=None, method: str = "gradcam", batch_size: int = 32,
                  target_layer: nn.Module | None = None):
    """Yields (start, maps) per batch, maps (B, H, W) float32 in [0, 1] at the input's size (see cam_maps)."""
    x = as_input(images)
    if not len(x):
        return
    view = HeadView(model, head, target_layer, tuple(x.shape[-2:]))
    n_out = {"class": NUM_CLASSES, **HEAD_SIZES}[head]
    if classes is not None:
        classes = np.broadcast_to(np.asarray(classes, dtype=int), (len(x),))
        # The library's `with` block swallows IndexError, so a bad class would yield silently wrong maps.
        if len(classes) and not 0 <= classes.min() <= classes.max() < n_out:
            raise ValueError(f"classes must lie in 0..{n_out - 1} for head {head!r}")
    with get_method(method)(model=view, target_layers=[view.layer], reshape_transform=view.reshape_transform) as cam:
        for start in range(0, len(x), batch_size):
            targets = None if classes is None else [ClassifierOutputTarget(int(c))
                                                    for c in classes[start:start + batch_size]]
            with torch.enable_grad():  # callers may sit under no_grad; the CAM needs gradients
                maps = cam(input_tensor=x[start:start + batch_size], targets=targets)
            yield start, maps


def cam_maps(model, images, head: str = "class", classes=None, method: str = "gradcam", batch_size: int = 32,
             target_layer: nn.Module | None = None) -> np.ndarray:
    """(N, H, W) float32 maps, each min-max scaled to [0, 1] by the library, at the input's height and width.

    images: uint8 (N, H, W, 3) or an NCHW tensor (uint8, or float in [0, 1]: the model normalises inside).
    classes: the class of `head` to explain, per image or one for all; None explains each image's predicted class.
    """
    maps = [m for _, m in iter_cam_maps(model, images, head, classes, method, batch_size, target_layer)]
    return np.concatenate(maps) if maps else np.zeros((0, *as_input(images).shape[-2:]), np.float32)


def overlay(image, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """uint8 (H, W, 3) heatmap blended over the input image (uint8 HWC, or float [0, 1] HWC / CHW)."""
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    img = img.astype(np.float32) / 255 if img.dtype == np.uint8 else img.astype(np.float32)
    return show_cam_on_image(np.clip(img, 0, 1), cam, use_rgb=True, image_weight=image_weight)


# ------------------------------------------------------------------------------------------------- the number
def energy_share(cam, box):
    """Share of CAM energy (sum of non-negative values) inside box = (x0, y0, x1, y1), end-exclusive pixels.

    Returns a float for one (H, W) map, an array for a stack (..., H, W); NaN for a map with no energy at all.
    """
    cam = np.clip(np.asarray(cam, dtype=np.float64), 0, None)
    x0, y0, x1, y1 = (max(0, int(v)) for v in box)
    total, inside = cam.sum((-2, -1)), cam[..., y0:y1, x0:x1].sum((-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, inside / total, np.nan)
    return float(share) if share.ndim == 0 else share


def lower_half(box):
    x0, y0, x1, y1 = box
    return (x0, (y0 + y1) // 2, x1, y1)


def central_box(box, area: float = 0.6):
    """The centred box covering `area` of `box` (same aspect ratio), rounded to pixels."""
    x0, y0, x1, y1 = box
    f = math.sqrt(area)
    w, h = round((x1 - x0) * f), round((y1 - y0) * f)
    left, top = x0 + (x1 - x0 - w) // 2, y0 + (y1 - y0 - h) // 2
    return (left, top, left + w, top + h)


def regions(height: int, width: int, face_box=None, center_area: float = 0.6) -> dict[str, tuple]:
    """Named boxes the energy is measured in: face (the whole image without a face box), its centre, lower halves."""
    face = tuple(face_box) if face_box is not None else (0, 0, width, height)
    center = central_box(face, center_area)
    return {"face": face, "face_lower": lower_half(face), "center": center, "center_lower": lower_half(center)}
