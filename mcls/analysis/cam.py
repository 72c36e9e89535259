"""Where each head looks: class activation maps (pytorch-grad-cam) for any timm backbone, as overlays and as a number.

The number is the share of CAM energy (the sum of the map's values) inside a box. The face box is the whole image
while `crop=none` (the images are face crops already), which scores 1.0 by construction, so the central part of
the box and the lower half of each box are reported too; `area_share` says what a flat map would score.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
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

from mcls.analysis.plots import image_grid
from mcls.io import write_json
from mcls.labels import GENDERS, HEAD_SIZES, HEADS, MASK_STATES, NUM_CLASSES, age_band_names, decode
from mcls.model.classifier import class_log_probs, head_probs, unit_float
from mcls.runs.layout import Run

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
        raise ValueError(f"unknown CAM method {name!r}; valid: {', '.join(METHODS)}") from None


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
        raise ValueError(f"{type(backbone).__name__}: no module outputs the final feature map; pass target_layer=")
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


# ------------------------------------------------------------------------------------------------- a run
def head_class_names(age_bounds=(30, 60)) -> dict[str, tuple]:
    return {"mask": MASK_STATES, "gender": GENDERS, "age": age_band_names(tuple(age_bounds))}


def validation_table(run_dir: str | Path, data_dir: str | Path | None = None) -> pd.DataFrame:
    """Every fold's val_predictions.csv with `fold` and per-head `<head>_true` / `<head>_pred` columns.

    With data_dir, image paths are re-rooted there (a run trained elsewhere): <data_dir>/train/images/<person>/<file>.
    """
    from mcls.infer.serving import Serving

    # each image explained by its own fold's model: the run alone, as it scores its validation folds
    serving = Serving.resolve(run_dir, {"person_consistent": False, "calibrate_age": False}, members=False)
    table, probs = serving.oof_table()
    table["pred"] = probs.argmax(1)
    if data_dir is not None:
        table["path"] = [str(Path(data_dir, "train", "images", *Path(p).parts[-2:])) for p in table["path"]]
    marginals = {h: m.numpy() for h, m in head_probs(torch.as_tensor(probs)).items()}
    for i, head in enumerate(HEADS):
        table[f"{head}_true"], table[f"{head}_pred"] = decode(table["label"])[i], decode(table["pred"])[i]
        # how sure the model was of the head's answer: the most confident mistakes are the ones to look at first
        table[f"{head}_conf"] = marginals[head][np.arange(len(table)), table[f"{head}_pred"].to_numpy()].round(3)
    return table


def mistakes_by_class(table: pd.DataFrame, age_bounds=(30, 60)) -> pd.DataFrame:
    """Per head and true class: validation images, how many the head got wrong, the error rate and the most
    frequent wrong answer (a validation_table in)."""
    names = head_class_names(age_bounds)
    rows = []
    for head in HEADS:
        for k, name in enumerate(names[head]):
            part = table[table[f"{head}_true"] == k]
            wrong = part[part[f"{head}_pred"] != k]
            common = wrong[f"{head}_pred"].value_counts()
            rows.append({"head": head, "true class": name, "images": len(part), "wrong": len(wrong),
                         "error rate": round(len(wrong) / len(part), 3) if len(part) else None,
                         "most often taken for": names[head][common.index[0]] if len(common) else ""})
    return pd.DataFrame(rows)


def _plan_grids(table: pd.DataFrame, names: dict, n: int, per_class: int, person, rng) -> dict[str, dict]:
    """grid name -> {ncols, title, cells: [(row index, head, class to explain, caption) or None]}."""
    def true(i, head):
        return names[head][table.at[i, f"{head}_true"]]

    def pred(i, head):
        return names[head][table.at[i, f"{head}_pred"]]

    def sample(rows, k):
        return list(rng.choice(rows, min(k, len(rows)), replace=False)) if len(rows) else []

    grids = {}
    for head in HEADS:
        wrong = table[table[f"{head}_true"] != table[f"{head}_pred"]]
        wrong = wrong.sort_values(f"{head}_conf", ascending=False, kind="stable").index[:n]  # most confident first
        cells = [(i, head, table.at[i, f"{head}_pred"], f"{table.at[i, 'person']} true {true(i, head)}\n"
                  f"pred {pred(i, head)} ({table.at[i, f'{head}_conf']:.2f})") for i in wrong]
        grids[f"misclassified_{head}"] = {
            "ncols": 8, "pairs": True, "cells": cells,
            "title": f"{head} head: validation mistakes, most confident first (each image, then the CAM of the "
                     "predicted class)"}
        cells = []
        for k, name in enumerate(names[head]):
            picked = sample(table.index[table[f"{head}_true"] == k], per_class)
            cells += [(i, head, k, f"{name} (pred {pred(i, head)})") for i in picked]
            cells += [None] * (per_class - len(picked))
        grids[f"per_class_{head}"] = {
            "ncols": per_class, "cells": cells,
            "title": f"{head} head: random validation images, one row per class (CAM of the true class)"}
    counts = table["person"].value_counts()
    if person is None:
        person = rng.choice(counts.index[counts == counts.max()])
    elif str(person) not in counts.index:
        raise ValueError(f"person {person!r} is not in this run's validation folds, e.g. {list(counts.index[:5])}")
    rows = sorted(table.index[table["person"] == str(person)], key=lambda i: Path(table.at[i, "path"]).name)
    cells = [(i, head, table.at[i, f"{head}_pred"], f"{Path(table.at[i, 'path']).stem}: {head} {pred(i, head)}")
             for head in HEADS for i in rows]
    grids[f"person_{person}"] = {"ncols": len(rows), "cells": cells,
                                 "title": f"person {person}: rows mask / gender / age (CAM of the predicted class)"}
    return grids


def _load_as_trained(paths, cfg, device: str) -> np.ndarray:
    """uint8 (N, S, S, 3) images as the run's validation saw them, face-cropped if the run was trained on crops."""
    from mcls.data.faces import CropSettings
    from mcls.data.cache import load_images

    return load_images(paths, cfg.img_size, crop=CropSettings.from_config(cfg, device=device))[0]


def inspect_run(run_dir: str | Path, data_dir: str | Path | None = None, method: str = "gradcam", n: int = 16,
                per_class: int = 4, person: str | None = None, max_images: int | None = None,
                out_dir: str | Path | None = None, device: str = "auto", batch_size: int = 32, seed: int = 0) -> dict:
    """CAM grids and energy figures for a trained run, each fold's images explained by that fold's best.pt.

    Writes into out_dir (default: the run folder) cam_<method>_misclassified_<head>.png, cam_<method>_per_class_
    <head>.png, cam_<method>_person_<id>.png, and cam_energy.json, where this method's entry (see energy_summary)
    joins those of other methods. Energy is measured on every validation image (or a random `max_images`) for
    each head's predicted class.
    Returns {"energy": this method's entry, "paths": {name: Path}} (figures are saved and closed).
    """
    from mcls.analysis.plots import save
    from mcls.model.checkpoint import load_checkpoint
    from mcls.runtime.device import select_device

    get_method(method)
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir
    dev = select_device(device)
    rng = np.random.default_rng(seed)
    table = validation_table(run_dir, data_dir)
    energy_rows = set(table.index if max_images is None or max_images >= len(table)
                      else rng.choice(table.index, max_images, replace=False))
    cfg = None
    tiles, raw, shares = {}, {}, {h: [] for h in HEADS}
    for fold, rows in table.groupby("fold"):
        model, fold_cfg = load_checkpoint(Run(run_dir).fold(fold).best, dev)
        if cfg is None:
            cfg = fold_cfg
            grids = _plan_grids(table, head_class_names(cfg.age_bounds), n, per_class, person, rng)
            wanted = {c[:3] for g in grids.values() for c in g["cells"] if c is not None}
        shown = sorted({i for i, _, _ in wanted if i in rows.index})
        measured = sorted(energy_rows & set(rows.index))
        use = sorted(set(shown) | set(measured))
        images = _load_as_trained(table.loc[use, "path"], fold_cfg, device)
        pos = {i: k for k, i in enumerate(use)}
        boxes = regions(fold_cfg.img_size, fold_cfg.img_size)
        for head in HEADS:
            sel = [pos[i] for i in measured]
            for _, maps in iter_cam_maps(model, images[sel], head, None, method, batch_size):
                shares[head].append({r: energy_share(maps, b) for r, b in boxes.items()})
            cells = [(i, h, k) for i, h, k in wanted if h == head and i in pos]
            if cells:
                maps = cam_maps(model, images[[pos[i] for i, _, _ in cells]], head, [k for _, _, k in cells], method,
                                batch_size)
                tiles.update({c: overlay(images[pos[c[0]]], m) for c, m in zip(cells, maps)})
                raw.update({c[0]: images[pos[c[0]]] for c in cells})
        del model

    out = {"paths": {}}
    for name, grid in grids.items():
        cells = grid["cells"]
        if grid.get("pairs"):  # the photo beside its CAM, so the mistake can be judged on the image itself
            shown = [t for c in cells for t in (raw[c[0]], tiles[c[:3]])]
            captions = [t for c in cells for t in (c[3], "CAM")]
        else:
            shown = [None if c is None else tiles[c[:3]] for c in cells]
            captions = [None if c is None else c[3] for c in cells]
        fig = image_grid(shown, captions, grid["ncols"], grid["title"])
        out["paths"][name] = save(fig, out_dir / f"cam_{method.replace('+', 'p')}_{name}.png")
    face = ("whole image (crop=none: the images are face crops already)" if getattr(cfg, "crop", "none") == "none"
            else f"whole image, which is the run's face crop (crop={cfg.crop}: the face plus margins)")
    out["energy"] = energy_summary(shares, regions(cfg.img_size, cfg.img_size), method, (cfg.img_size,) * 2,
                                   face_box=face, folds=sorted(table["fold"].unique().tolist()), img_size=cfg.img_size)
    out["paths"]["energy"] = write_energy(out_dir / "cam_energy.json", out["energy"])
    return out


def energy_summary(shares: dict[str, list], boxes: dict, method: str, image_hw, **extra) -> dict:
    """{method, target, face_box, regions, area_share, heads: {head: {region: mean share}}, n_images, n_no_energy}.

    area_share is what a flat map scores in each region: a head looks at a region more than chance if it beats it.
    """
    heads, n_images, empty = {}, 0, {}
    for head, parts in shares.items():
        table = {r: np.concatenate([p[r] for p in parts]) if parts else np.zeros(0) for r in boxes}
        n_images = len(table["face"])
        empty[head] = int(np.isnan(table["face"]).sum())
        heads[head] = {r: round(float(np.nanmean(v)), 4) if len(v) > empty[head] else None for r, v in table.items()}
    area = {r: round(energy_share(np.ones(image_hw), b), 4) for r, b in boxes.items()}
    return {"method": method, "target": "each head's predicted class",
            "regions": {r: list(b) for r, b in boxes.items()}, "area_share": area, "heads": heads,
            "n_images": n_images, "n_no_energy": empty, **extra}


def write_energy(path: str | Path, entry: dict) -> Path:
    """Adds `entry` under its method to the JSON file at path (other methods' entries are kept); returns path."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[entry["method"]] = entry
    write_json(path, data)
    return path
