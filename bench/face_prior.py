"""The dlib face prior on its own: descriptor extraction speed, and the expert's gender and age-band scores on the
quality bench's person-held-out folds (5 folds, seed 42), without any network.

    .venv/bin/python bench/face_prior.py --data ../shared/data/utkmask

Writes bench/results/face_prior.{md,csv}. Descriptors are cached (.cache/mcls/embeddings), so a second run only
fits; the speed rows time fresh extractions of `--speed-images` images with the cache off (their MTCNN faces are
the crops' cache, timed by bench/crop.py).
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
from sklearn.metrics import f1_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import write_result

from mcls.data.embeddings import face_descriptors
from mcls.data.faces import CropSettings, detect_faces
from mcls.data.folds import assign_folds
from mcls.data.table import load_train_table
from mcls.infer import face_expert


def speed(paths: list[str]) -> dict:
    detect_faces(paths)  # boxes cached first: the row times landmarks + descriptor alone
    start = time.perf_counter()
    face_descriptors(paths, CropSettings(), cache_dir="")
    seconds = time.perf_counter() - start
    return {"images": len(paths), "seconds": round(seconds, 2), "ms_per_image": round(1000 * seconds / len(paths), 1)}


def expert_scores(table: pd.DataFrame, descriptors: np.ndarray, c: float) -> list[dict]:
    """Per fold: the expert fitted on the other folds, scored on this one (per image, every mask state)."""
    rows = []
    for k in sorted(table["fold"].unique()):
        val = (table["fold"] == k).to_numpy()
        expert = face_expert.fit_expert(descriptors[~val], table[~val], c)
        probs = face_expert.expert_probs(expert, descriptors[val])
        g, a = probs["gender"].argmax(1), probs["age"].argmax(1)
        t = table[val]
        masked = (t["mask"] == 0).to_numpy()
        rows.append({"C": c, "fold": int(k), "f1_gender": f1_score(t["gender"], g, average="macro"),
                     "acc_gender": float((g == t["gender"]).mean()),
                     "f1_age": f1_score(t["age_band"], a, average="macro"),
                     "acc_age": float((a == t["age_band"]).mean()),
                     "f1_old": f1_score(t["age_band"] == 2, a == 2),
                     "acc_age_unmasked": float((a[~masked] == t["age_band"].to_numpy()[~masked]).mean()),
                     "acc_age_masked": float((a[masked] == t["age_band"].to_numpy()[masked]).mean())})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/utkmask")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--speed-images", type=int, default=100)
    ap.add_argument("--C", default="0.03,0.1,0.3,1", help="comma list of inverse L2 strengths to score")
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "bench/face_prior.py", *(argv or sys.argv[1:])])

    table = load_train_table(args.data)
    table["fold"] = assign_folds(table, 5, 42)
    start = time.perf_counter()
    descriptors = face_descriptors(table["path"])
    fetch = time.perf_counter() - start
    fast = speed(table["path"].sample(args.speed_images, random_state=0).tolist())
    folds = pd.DataFrame([r for c in args.C.split(",") for r in expert_scores(table, descriptors, float(c))])
    means = folds.drop(columns="fold").groupby("C").mean().reset_index()

    text = write_result(
        args.out, "face_prior", folds, "The dlib face prior alone", command,
        f"Descriptor extraction (5-point landmarks + dlib ResNet, face boxes from the MTCNN cache, cache off): "
        f"{fast['ms_per_image']} ms per image ({fast['images']} images in {fast['seconds']} s, one process). "
        f"All {len(table)} training images' descriptors read back from the cache in {fetch:.1f} s.\n\n"
        "The expert (mcls/infer/face_expert.py: standardised descriptor -> logistic regression per head) fitted "
        "on 4 folds and scored per image on the 5th, mean over the 5 person-held-out folds (the quality bench's "
        "split); no network involved. `acc_age_masked`/`unmasked`: on images with a correctly worn mask vs the "
        "others.\n\n" + means.round(4).to_markdown(index=False) + "\n")
    print(text)


if __name__ == "__main__":
    main()
