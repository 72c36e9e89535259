"""A trained run under GradCAM: its validation images, each explained by its own fold's model, as grids (the most
confident mistakes, random images per class, one person's photos) and as energy shares per head, kept in
cam_energy.json beside the figures. The CAM machinery itself is mcls.analysis.cam."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mcls.analysis.cam import cam_maps, energy_share, get_method, iter_cam_maps, overlay, regions
from mcls.analysis.plots import image_grid
from mcls.errors import UserError
from mcls.io import write_json
from mcls.labels import GENDERS, HEADS, MASK_STATES, age_band_names, decode
from mcls.model.classifier import head_probs
from mcls.runs.layout import Run


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
        raise UserError(f"person {person!r} is not in this run's validation folds, e.g. {list(counts.index[:5])}")
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

    return load_images(paths, cfg.img_size, crop=CropSettings.from_config(cfg, device=device),
                       max_pixels=cfg.max_pixels)[0]


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
