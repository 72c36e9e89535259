"""How well the relabel finder's probe finds planted gender errors: ImageNet features against dlib's face descriptor.

    .venv/bin/python bench/relabel_probe.py --data ../shared/data/utkmask

Flips the gender of `--flips` random persons of the training table (in memory; files untouched), computes the
probe's out-of-fold probabilities with each feature set (mcls.analysis.relabel.probe_heads, the finder's fitting),
and reports where the planted persons land among the finder's gender suspects: the rank of each, how many are in
the top 20, and how many real (unplanted) persons the queue lists beside them. Repeated over `--plants` seeds.
Features are computed once and cached under .cache/mcls/bench/ (the descriptors also in the crop cache).

Writes bench/results/relabel_probe.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine

from mcls.analysis.relabel import embed, find_suspects, probe_heads
from mcls.config import Config
from mcls.data.embeddings import face_descriptors
from mcls.data.table import load_train_table
from mcls.infer.face_expert import descriptor_settings


def imagenet_features(table: pd.DataFrame, cache: Path) -> np.ndarray:
    if cache.is_file():
        return np.load(cache)
    start = time.perf_counter()
    x, bad = embed(table["path"], device="cpu")
    x[bad] = 0
    print(f"ImageNet features of {len(table)} images: {time.perf_counter() - start:.0f} s")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, x)
    return x


def planted_ranks(table: pd.DataFrame, features: dict, flips: int, seed: int) -> dict:
    persons = table["person"].unique()
    planted = set(np.random.default_rng(seed).choice(persons, flips, replace=False))
    t = table.copy()
    hit = t["person"].isin(planted)
    t.loc[hit, "gender"] = 1 - t.loc[hit, "gender"]
    queue = find_suspects(t, probe_heads(t, features))
    gender = queue[queue["check"] == "gender"].reset_index(drop=True)
    ranks = sorted(int(i) + 1 for i in np.flatnonzero(gender["person"].isin(planted)))
    return {"listed": len(ranks), "top20": sum(r <= 20 for r in ranks), "median_rank": float(np.median(ranks))
            if ranks else np.nan, "worst_rank": max(ranks) if ranks else np.nan, "queue_len": len(gender),
            "ranks": " ".join(map(str, ranks))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "utkmask"))
    ap.add_argument("--flips", type=int, default=20)
    ap.add_argument("--plants", type=int, default=3, help="seeds of planted flips")
    ap.add_argument("--features", default="imagenet,face,both")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "relabel_probe.md"))
    args = ap.parse_args(argv)

    cfg = Config(data_dir=args.data, device="cpu")
    table = load_train_table(cfg.data_dir, cfg.age_bounds, cfg.train_old_age)
    start = time.perf_counter()
    desc = face_descriptors(table["path"], descriptor_settings(cfg))
    print(f"dlib descriptors of {len(table)} images: {time.perf_counter() - start:.0f} s (cached ones are read back)")
    wanted = args.features.split(",")
    img = imagenet_features(table, ROOT / ".cache" / "mcls" / "bench" / f"probe-imagenet-{len(table)}.npy") \
        if {"imagenet", "both"} & set(wanted) else None
    sets = {"imagenet": lambda: {"mask": img, "gender": img, "age": img},
            "face": lambda: {"mask": desc, "gender": desc, "age": desc},
            "both": lambda: {h: np.hstack([img, desc]) for h in ("mask", "gender", "age")}}
    rows = []
    for name in wanted:
        for seed in range(args.plants):
            r = planted_ranks(table, sets[name](), args.flips, seed)
            rows.append({"features": name, "plant_seed": seed, **r})
            print(rows[-1])
    df = pd.DataFrame(rows)
    summary = df.groupby("features", sort=False)[["listed", "top20", "median_rank", "worst_rank", "queue_len"]].mean()
    text = (f"# Relabel probe: planted gender flips among the finder's gender suspects\n\nmachine: {machine()}\n\n"
            f"`.venv/bin/python bench/relabel_probe.py --data {args.data} --flips {args.flips} --plants "
            f"{args.plants} --features {args.features}`\n\n{len(table)} images of "
            f"{table['person'].nunique()} persons; {args.flips} persons' genders flipped per plant seed; 5 "
            "person-grouped folds, one logistic regression (C=0.01) per head and fold, as the finder fits it. "
            "`listed`: planted persons the gender queue lists; `top20`: of those, in its first 20 rows; "
            "`queue_len`: rows in the gender queue (planted and real suspects).\n\n## Mean over plant seeds\n\n"
            f"{summary.round(1).to_markdown()}\n\n## Each plant\n\n{df.to_markdown(index=False)}\n")
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
