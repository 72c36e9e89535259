"""The leak guard's threshold from this data's own distances: where does one person end and a stranger begin?

    .venv/bin/python bench/leak_threshold.py --data ../shared/data/utkmask --external ../shared/data/utkface-extra

dlib's same-person rule (0.6 between raw descriptors, about 0.42 between the kit's unit-length ones) was set for
telling one pair apart; the guard compares every external face with thousands of competition photos, so a stranger
only has to resemble one of them. The competition data gives both sides of the line with identities known:

- strangers at this scale: each training person's `normal` photo against the nearest other person's `normal`
  (UTKFace may hold one person twice, so the lowest of these can be a true pair), and against the nearest other
  person's masked photo (eval images are 6 in 7 masked);
- one person, masked: each sampled person's `normal` against their own `mask1` and `incorrect_mask`, which is how
  far an eval person's masked photos sit from their own face (same photo, a mask drawn on it);
- the external faces (aged external_min_age or over, as training reads them) against their nearest competition
  photo, train `normal` and eval apart.

It prints the quantiles and, for each candidate threshold, the share of strangers that would be dropped and the
external faces the guard would drop. Writes bench/results/leak_threshold.{md,csv} and leak_threshold.png.
Descriptors land in the crop cache the training's guard reads, so running this first makes its guard instant.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import write_result  # noqa: E402

from mcls.config import Config  # noqa: E402
from mcls.data.embeddings import face_descriptors  # noqa: E402
from mcls.data.external import read_external  # noqa: E402
from mcls.data.faces import CropSettings  # noqa: E402
from mcls.data.table import load_eval_table, load_train_table  # noqa: E402

CANDIDATES = (0.2, 0.25, 0.3, 0.35, 0.4, 0.42)
QUANTILES = (0.001, 0.01, 0.05, 0.25, 0.5)


def nearest(a: np.ndarray, b: np.ndarray, exclude_same: np.ndarray | None = None) -> np.ndarray:
    """Each row of `a`'s distance to its nearest row of `b` (unit descriptors); `exclude_same[i, j]` True masks a
    pair out (the same person); zero rows (no face read) never match."""
    d = np.sqrt(np.clip(2 - 2 * a @ b.T, 0, None))
    d[:, np.abs(b).sum(1) == 0] = np.inf
    if exclude_same is not None:
        d[exclude_same] = np.inf
    out = d.min(1)
    out[np.abs(a).sum(1) == 0] = np.inf
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/utkmask")
    ap.add_argument("--external", default="../shared/data/utkface-extra")
    ap.add_argument("--masked-persons", type=int, default=300, help="persons whose masked photos are embedded")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    cfg = Config().updated({"data_dir": args.data, "crop": "mtcnn"})
    settings = CropSettings.from_config(cfg)
    train = load_train_table(args.data)
    normals = train[train["stem"] == "normal"].reset_index(drop=True)
    rng = np.random.default_rng(0)
    sampled = rng.choice(normals["person"].unique(), min(args.masked_persons, normals["person"].nunique()),
                         replace=False)
    chosen = train["person"].isin(sampled) & train["stem"].isin(["mask1", "incorrect_mask"])
    masked = train[chosen].reset_index(drop=True)
    evals = load_eval_table(args.data)
    external = read_external(args.external)
    adults = external[external["age"] >= cfg.external_min_age].reset_index(drop=True)

    d_norm = face_descriptors(normals["path"], settings)
    d_mask = face_descriptors(masked["path"], settings)
    d_eval = face_descriptors(evals["path"], settings)
    d_ext = face_descriptors(adults["path"], settings)

    persons = normals["person"].to_numpy()
    own = {p: i for i, p in enumerate(persons)}
    rows = []

    def add(name, values):
        values = values[np.isfinite(values)]
        rows.append({"distances": name, "n": len(values),
                     **{f"q{q:g}": float(np.quantile(values, q)) for q in QUANTILES},
                     **{f"under {t:g}": float((values < t).mean()) for t in CANDIDATES}})
        return values

    strangers = add("stranger: normal vs nearest other normal",
                    nearest(d_norm, d_norm, persons[:, None] == persons[None, :]))
    masked_strangers = add("stranger: normal vs nearest other person's masked photo",
                           nearest(d_norm, d_mask, persons[:, None] == masked["person"].to_numpy()[None, :]))
    idx = masked["person"].map(own).to_numpy()
    same = np.sqrt(np.clip(2 - 2 * (d_mask * d_norm[idx]).sum(1), 0, None))
    same[(np.abs(d_mask).sum(1) == 0) | (np.abs(d_norm[idx]).sum(1) == 0)] = np.inf
    kinds = masked["stem"].to_numpy()
    same_mask = add("same person: normal vs own mask1", same[kinds == "mask1"])
    add("same person: normal vs own incorrect_mask", same[kinds == "incorrect_mask"])
    add("external vs nearest train normal", nearest(d_ext, d_norm))
    add("external vs nearest eval image", nearest(d_ext, d_eval))
    to_any = add("external vs nearest competition photo", np.minimum(nearest(d_ext, d_norm), nearest(d_ext, d_eval)))
    table = pd.DataFrame(rows)

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    bins = np.linspace(0, 0.8, 81)
    for values, label in ((strangers, "stranger (normal vs nearest other normal)"),
                          (masked_strangers, "stranger (vs nearest masked photo of another)"),
                          (same_mask, "same person (normal vs own mask1)"),
                          (to_any, f"external adults vs nearest competition photo ({len(adults)})")):
        ax.hist(values, bins=bins, density=True, histtype="step", lw=1.5, label=label)
    ax.set_xlabel("descriptor distance (unit-length dlib)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("where one person ends: distances on utkmask and the external set")
    fig.tight_layout()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(args.out) / "leak_threshold.png", dpi=100)

    body = (f"{len(normals)} training persons' normal photos, masked photos (mask1, incorrect_mask) of "
            f"{len(sampled)} of them, {len(evals)} eval images and {len(adults)} external faces aged "
            f"{cfg.external_min_age}+ of {len(external)} ({args.external}). Quantiles of each distance, then the "
            "share under each candidate threshold. A threshold drops an external face whose nearest competition "
            "photo is under it: its cost is the strangers' share under it (faces lost for nothing), its purpose "
            "the same-person rows.\n\n"
            + table.round(3).to_markdown(index=False) + "\n\n![distances](leak_threshold.png)\n")
    print(write_result(args.out, "leak_threshold", table, "Leak guard threshold: the distances of this data",
                       " ".join([".venv/bin/python", "bench/leak_threshold.py", *(argv or sys.argv[1:])]), body))


if __name__ == "__main__":
    main()
