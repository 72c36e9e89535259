"""Does dlib's face descriptor help more fused into the gender and age heads than averaged after them?

Screens the fused-feature face prior (issue #22, lever 1a) without a new training path: for each fold of a trained
run, the fold's network is frozen and its gender and age heads are refitted as logistic regressions on the fold's
training persons, once on the network's pooled features alone ("refit", the control) and once on those features
beside the standardised descriptor ("fused"). Both are scored on the held-out persons against the network's own
heads ("net") and the late blend the kit serves (`face_weight` 0.5, "late"). The mask head is the network's in
every arm, so the 18-class F1 moves only through gender and age.

    .venv/bin/python bench/face_fusion.py --data ../shared/data/utkmask --run runs/quality/default-5d84fe89

Writes bench/results/face_fusion.{md,csv}. Features are the mean over each image and its mirror image (flip TTA),
so every arm reads the same inputs. `+persons` averages gender and age over each held-out person's images using the
true person ids (the served grouping recovers them at ARI 0.92). C is scored at several values on the held-out
folds: picking the best of them there flatters that arm a little, so compare arms at one C.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import write_result

from mcls.data.cache import cached_images
from mcls.data.embeddings import face_descriptors
from mcls.data.faces import CropSettings
from mcls.data.folds import assign_folds
from mcls.data.table import load_train_table
from mcls.infer import face_expert
from mcls.labels import NUM_CLASSES, decode, near_edge
from mcls.metrics import score
from mcls.model.checkpoint import load_checkpoint
from mcls.model.classifier import head_probs
from mcls.runs.layout import Run

HEADS = ("gender", "age")


@torch.no_grad()
def fold_features(model, images: np.ndarray, batch_size: int = 128) -> dict[str, np.ndarray]:
    """Pooled features per task ("all" for a shared backbone) of each image, averaged with its mirror image's."""
    model.eval()
    feats = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.array(images[i:i + batch_size])).permute(0, 3, 1, 2)
        f, g = model.features(x), model.features(x.flip(-1))
        feats.append({t: ((f[t] + g[t]) / 2).numpy() for t in f})
    return {t: np.concatenate([b[t] for b in feats]) for t in feats[0]}


def head_input(model, feats: dict[str, np.ndarray], head: str) -> np.ndarray:
    return feats[model.task_of(head)]


@torch.no_grad()
def net_heads(model, feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each head's probabilities from the network's own linear heads on the given features."""
    t = {k: torch.from_numpy(v) for k, v in feats.items()}
    logits = {k: head(t[model.task_of(k)]) for k, head in model.heads.items()}
    return {k: v.float().softmax(-1).numpy() for k, v in logits.items() if k in ("mask", *HEADS)}


def fit_lr(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=3000).fit(x, y)


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, scale = train.mean(0), train.std(0) + 1e-6
    return [(a - mean) / scale for a in (train, *others)]


def class_probs(mask: np.ndarray, gender: np.ndarray, age: np.ndarray) -> np.ndarray:
    """(N, 18) probabilities of independent heads."""
    m, g, a = decode(np.arange(NUM_CLASSES))
    return mask[:, m] * gender[:, g] * age[:, a]


def per_person(probs: np.ndarray, persons: np.ndarray) -> np.ndarray:
    return pd.DataFrame(probs).groupby(persons).transform("mean").to_numpy()


def scores(arm: str, c: float, k: int, labels, mask, gender, age, persons) -> list[dict]:
    rows = []
    for view, (g, a) in (("as is", (gender, age)), ("+persons", (per_person(gender, persons),
                                                                  per_person(age, persons)))):
        s = score(labels, class_probs(mask, g, a))
        rows.append({"arm": arm, "C": c, "view": view, "fold": k,
                     **{m: s[m] for m in ("f1", "acc_gender", "acc_age", "f1_age", "f1_old")}})
    return rows


def fold_rows(run: Run, k: int, table: pd.DataFrame, desc: np.ndarray, cs: list[float]) -> list[dict]:
    cfg = run.config
    model, _ = load_checkpoint(run.fold(k).best, "cpu")
    images, _ = cached_images(table["path"], cfg.img_size, "error", CropSettings.from_config(cfg, device="cpu"),
                                cfg.image_cache)
    start = time.perf_counter()
    feats = fold_features(model, images)
    print(f"fold {k}: features of {len(table)} images in {time.perf_counter() - start:.0f} s", flush=True)
    val = (table["fold"] == k).to_numpy()
    train = ~val & ~near_edge(table["age"], cfg.age_bounds, cfg.near_edge_drop)
    own = net_heads(model, feats)
    labels, persons = table["label"].to_numpy()[val], table["person"].to_numpy()[val]
    mask = own["mask"][val]
    rows = scores("net", np.nan, k, labels, mask, own["gender"][val], own["age"][val], persons)

    expert = face_expert.fit_expert(desc[train], table[train])
    blended = head_probs(torch.from_numpy(face_expert.blend(class_probs(mask, own["gender"][val], own["age"][val]),
                                                            face_expert.expert_probs(expert, desc[val]), 0.5)))
    rows += scores("late (face_weight 0.5)", np.nan, k, labels, mask, blended["gender"].numpy(),
                   blended["age"].numpy(), persons)

    has_desc = np.abs(desc).sum(1) > 0
    d_train, d_val = standardise(desc[train & has_desc], desc[val])
    d_all = np.zeros_like(desc)
    d_all[train & has_desc], d_all[val] = d_train, d_val
    d_all[~has_desc] = 0  # no face found: the descriptor says nothing
    inputs = {}  # head -> arm -> (training rows, validation rows), standardised on the training rows
    for head in HEADS:
        f_train, f_val = standardise(head_input(model, feats, head)[train], head_input(model, feats, head)[val])
        inputs[head] = {"refit": (f_train, f_val),
                        "fused": (np.hstack([f_train, d_all[train]]), np.hstack([f_val, d_all[val]]))}
    for c in cs:
        fitted = {"refit": {}, "fused": {}}
        for head in HEADS:
            y = table["gender" if head == "gender" else "age_band_train"].to_numpy()[train]
            for arm, (xt, xv) in inputs[head].items():
                lr = fit_lr(xt, y, c)
                p = np.zeros((len(xv), 2 if head == "gender" else 3))
                p[:, lr.classes_.astype(int)] = lr.predict_proba(xv)
                fitted[arm][head] = p
        for arm, p in fitted.items():
            rows += scores(arm, c, k, labels, mask, p["gender"], p["age"], persons)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/utkmask")
    ap.add_argument("--run", default="runs/quality/default-5d84fe89", help="a trained run folder (every fold)")
    ap.add_argument("--folds", default="", help="comma list (default: every trained fold)")
    ap.add_argument("--C", default="0.0001,0.0003,0.001,0.01,0.1",
                    help="comma list of inverse L2 strengths of the refitted heads")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "bench/face_fusion.py", *(argv or sys.argv[1:])])

    run = Run.open(args.run)
    cfg = run.config
    table = load_train_table(args.data, cfg.age_bounds, cfg.train_old_age, cfg.relabel_file or None)
    table["fold"] = assign_folds(table, cfg.n_folds, cfg.seed)
    desc = face_descriptors(table["path"], face_expert.descriptor_settings(cfg))
    folds = [int(f) for f in args.folds.split(",")] if args.folds else [f.k for f in run.folds]
    cs = [float(c) for c in args.C.split(",")]
    rows = [r for k in folds for r in fold_rows(run, k, table, desc, cs)]

    per_fold = pd.DataFrame(rows)
    mean = (per_fold.groupby(["view", "arm", "C"], dropna=False)
            .agg(folds=("fold", "nunique"), **{m: (m, "mean") for m in ("f1", "acc_gender", "acc_age", "f1_age",
                                                                         "f1_old")})
            .reset_index().sort_values(["view", "f1"], ascending=[True, False]))
    text = write_result(
        args.out, "face_fusion", per_fold, "The face prior fused into the gender and age heads, against averaged "
        "after them", command,
        f"Run `{args.run}` (folds {folds}); its networks frozen. `net`: the network's own heads; `late`: the "
        "served blend with the dlib expert at face_weight 0.5; `refit`: gender and age heads refitted by "
        "logistic regression (inverse L2 strength C) on the network's pooled features of the fold's training "
        "persons; `fused`: the same on those features beside the standardised dlib descriptor. The mask head is "
        "the network's in every arm. Mean over folds; per fold in face_fusion.csv.\n\n"
        + mean.to_markdown(index=False, floatfmt=".4f") + "\n")
    print(text)


if __name__ == "__main__":
    main()
