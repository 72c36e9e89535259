"""Finding wrong labels and recording decisions about them.

The finder ranks persons whose labels look wrong, from out-of-fold probabilities (a model never scores a person it
trained on, so it cannot have memorised a wrong label): (a) `normal` and `incorrect_mask` files that look swapped,
(b) a gender or age band the model confidently disagrees with, (c) ages a year or two from a band edge, listed
separately because there the model is weak evidence either way. The decisions about them are recorded by
mcls.analysis.relabel_decisions.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mcls.data.table import read_relabels
from mcls.errors import UserError
from mcls.labels import (
    FILE_MASK,
    GENDERS,
    MASK_STATES,
    NUM_CLASSES,
    PROB_COLUMNS,
    age_band,
    age_band_names,
    decode,
)

log = logging.getLogger(__name__)

QUEUE_COLUMNS = ["person", "field", "given", "suggested", "score", "reason", "check"]
CHECKS = ("swap", "gender", "age", "edge")  # queue order: the first three by score, then the edge list


# ---------------------------------------------------------------------------------------------- OOF probabilities
def load_oof(source: str | Path, table: pd.DataFrame) -> np.ndarray:
    """(N, 18) out-of-fold probabilities aligned with `table` rows, from a run folder's fold*/val_predictions.csv
    or from one CSV with path, p0..p17 (the finder's oof.csv).

    Each validation fold was scored by the model that did not train on it; a run with fold=-1 covers every image.
    Rows the source did not score are NaN (the finder then skips those persons' model checks).
    """
    from mcls.infer.serving import Serving

    source = Path(source)
    if source.is_file():
        pred = pd.read_csv(source)
        probs = pred[PROB_COLUMNS].to_numpy(dtype=float)
    else:  # the run's own models as they scored their validation folds, not shared between images
        serving = Serving.resolve(source, {"person_consistent": False, "calibrate_age": False}, members=False)
        pred, probs = serving.oof_table()
        probs = probs.astype(float)
    key = pred["path"].map(lambda p: str(Path(p).resolve()))
    if key.duplicated().any():
        raise UserError(f"{source}: some images were scored more than once; not out-of-fold predictions")
    row = dict(zip(key, range(len(pred))))
    out = np.full((len(table), NUM_CLASSES), np.nan)
    for i, p in enumerate(table["path"]):
        j = row.get(str(Path(p).resolve()))
        if j is not None:
            out[i] = probs[j]
    scored = ~np.isnan(out[:, 0])
    if not scored.all():
        log.warning("%s scored %d of %d images; the rest get no model checks", source, scored.sum(), len(table))
    return out


PROBE_FEATURES = ("imagenet", "face", "auto")


def probe_oof(table: pd.DataFrame, n_folds: int = 5, seed: int = 42, backbone: str = "tf_efficientnet_lite0",
              size: int = 224, device: str = "auto", crop=None, batch_size: int = 64,
              features: str = "auto", face_settings=None) -> np.ndarray:
    """(N, 18) out-of-fold probabilities from a cheap model: frozen features and one logistic regression per head
    (mask, gender, age band), fitted per person-grouped fold and scoring only its held-out fold.

    features: "imagenet" (offline ImageNet backbone features for every head), "face" (the mask head on those,
    gender and age on dlib's face descriptors, mcls.data.embeddings) or "auto" (face when dlib is installed).
    `face_settings` (CropSettings) say where the descriptors' face boxes and cache are (default: `crop`'s).
    Minutes on a CPU for thousands of images, no training run needed. Unreadable images get NaN rows.
    """
    from mcls.data import embeddings
    from mcls.data.faces import CropSettings

    if features not in PROBE_FEATURES:
        raise UserError(f"probe features {features!r}: valid are {PROBE_FEATURES}")
    if features == "auto":
        features = "face" if embeddings.available() else "imagenet"
    start = time.perf_counter()
    x, bad = embed(table["path"], backbone, size, device, crop, batch_size)
    by_head = {"mask": x, "gender": x, "age": x}
    if features == "face":
        desc = embeddings.face_descriptors(table["path"], face_settings or crop or CropSettings(device=device))
        by_head.update(gender=desc, age=desc)
        bad = np.union1d(bad, np.flatnonzero(np.abs(desc).sum(1) == 0))
    log.info("probe: %d images, %s features in %.0f s; fitting %d folds x 3 heads", len(table), features,
             time.perf_counter() - start, n_folds)
    return probe_heads(table, by_head, n_folds, seed, bad)


def probe_heads(table: pd.DataFrame, features: dict[str, np.ndarray], n_folds: int = 5, seed: int = 42,
                bad=()) -> np.ndarray:
    """probe_oof's fitting: one logistic regression per head on that head's (N, D) features, out of fold; rows in
    `bad` (no features) come back NaN."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mcls.data.folds import assign_folds

    ok = np.setdiff1d(np.arange(len(table)), np.asarray(bad, dtype=int))
    t = table.iloc[ok].reset_index(drop=True)
    folds = assign_folds(t, n_folds, seed).to_numpy()
    targets = {"mask": t["mask"].to_numpy(), "gender": t["gender"].to_numpy(), "age": t["age_band"].to_numpy()}
    marginals = {h: np.zeros((len(t), 3 if h != "gender" else 2)) for h in targets}
    for k in range(n_folds):
        val = folds == k
        for h, y in targets.items():
            x = features[h][ok]
            # strong penalty: a person's 7 shots are near-duplicates, so a weak one overfits and turns overconfident
            # (on utkmask C=0.01 put 11 of 20 flipped genders in the top 20, C=0.3 only 5)
            model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
            model.fit(x[~val], y[~val])
            p = np.zeros((val.sum(), marginals[h].shape[1]))
            p[:, model.classes_] = model.predict_proba(x[val])  # a class missing from a fold keeps probability 0
            marginals[h][val] = p
    m, g, a = decode(np.arange(NUM_CLASSES))
    out = np.full((len(table), NUM_CLASSES), np.nan)
    out[ok] = marginals["mask"][:, m] * marginals["gender"][:, g] * marginals["age"][:, a]
    return out


def embed(paths, backbone: str = "tf_efficientnet_lite0", size: int = 224, device: str = "auto", crop=None,
          batch_size: int = 64) -> tuple[np.ndarray, list[int]]:
    """(N, D) pooled features of a frozen offline-pretrained backbone, averaged with the flipped image; returns
    (features, indices of unreadable images)."""
    import torch

    from mcls.data.cache import load_images
    from mcls.model.classifier import create_model
    from mcls.runtime.device import Runtime
    from mcls.runtime.progress import progress

    rt = Runtime(device)
    model = rt.prepare(create_model(backbone, pretrained="offline", drop_rate=0.0)).eval()
    images, bad = load_images(paths, size, on_bad_image="skip", crop=crop)
    out, net = [], model.face_backbone()
    with torch.no_grad():
        for start in progress(range(0, len(images), batch_size), desc="embed"):
            x = rt.to_input(torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2))
            with rt.autocast():
                f = net(model.normalise(x)) + net(model.normalise(x.flip(-1)))
            out.append((f / 2).float().cpu().numpy())
    return np.concatenate(out), bad


# ---------------------------------------------------------------------------------------------- the finder
def person_marginals(table: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    """Per person: given labels, mean P(female), mean P(age band 0..2) over the 7 images, and the mask-state
    probabilities of the image labelled `not wear` and of the one labelled `incorrect` (NaN when unscored)."""
    p = probs.reshape(-1, 3, 2, 3)
    df = pd.DataFrame({"person": table["person"].to_numpy(), "mask": table["mask"].to_numpy(),
                       "gender": table["gender"].to_numpy(), "age": table["age"].to_numpy(),
                       "p_female": p.sum((1, 3))[:, 1], **{f"p_age{k}": p.sum((1, 2))[:, k] for k in range(3)},
                       **{f"p_mask{k}": p.sum((2, 3))[:, k] for k in range(3)},
                       "stem": table["stem"].to_numpy()})
    out = df.groupby("person", sort=False).agg(gender=("gender", "first"), age=("age", "first"),
                                                p_female=("p_female", "mean"),
                                                **{f"p_age{k}": (f"p_age{k}", "mean") for k in range(3)})
    for mask, name in ((2, "bare"), (1, "incorrect")):
        rows = df[df["mask"] == mask].drop_duplicates("person").set_index("person")
        for k in range(3):
            out[f"{name}_p{k}"] = rows[f"p_mask{k}"].reindex(out.index)
    swapped = df[(df["stem"] == "normal")].set_index("person")["mask"] == 1  # a relabel already swapped them
    out["swapped"] = swapped.reindex(out.index).fillna(False).astype(bool)
    return out.reset_index()


def find_suspects(table: pd.DataFrame, probs: np.ndarray, age_bounds=(30, 60), near_edge: int = 2,
                  min_swap: float = 0.5) -> pd.DataFrame:
    """The review queue: person, field, given, suggested, score, reason, check; one row per doubtful label.

    score is the model's probability that the given label is wrong. Rows with check swap / gender / age come first,
    by score; the `edge` list (ages within `near_edge` years of a band edge) follows, also by score.
    Confident learning sets the bar for gender and age: a person is listed when the probability of another class
    reaches that class's average probability among persons labelled with it (its self-confidence).
    """
    per = person_marginals(table, probs)
    rows = []
    scored = per["p_female"].notna()
    # (a) swapped files: both images explained better with the two labels exchanged
    a = per["bare_p1"] * per["incorrect_p2"]  # `not wear` file looks incorrect, `incorrect` file looks bare
    b = per["bare_p2"] * per["incorrect_p1"]
    p_swap = (a / (a + b).clip(lower=1e-12)).where(scored)
    for r, ps in zip(per.itertuples(), p_swap):
        if ps >= min_swap:
            now = "true" if r.swapped else "false"
            rows.append((r.person, "swap_normal_incorrect", now, "false" if r.swapped else "true", ps,
                         f"image labelled not wear looks incorrect ({r.bare_p1:.2f}), the one labelled incorrect "
                         f"looks bare ({r.incorrect_p2:.2f})", "swap"))
    # (b) gender: confident learning threshold per class
    p_gender = np.stack([1 - per["p_female"], per["p_female"]], 1)
    given = per["gender"].to_numpy()
    for cls in range(2):
        t = np.nanmean(p_gender[given == cls, cls]) if (given == cls).any() else 0.5
        for r, p in zip(per[given == 1 - cls].itertuples(), p_gender[given == 1 - cls, cls]):
            if p >= t and p > 0.5:
                rows.append((r.person, "gender", GENDERS[1 - cls], GENDERS[cls], p,
                             f"looks {GENDERS[cls]} (p={p:.2f}; bar {t:.2f})", "gender"))
    # (b) age band, far from an edge; (c) near an edge
    p_age = per[[f"p_age{k}" for k in range(3)]].to_numpy()
    band = age_band(per["age"].to_numpy(), age_bounds)
    names = age_band_names(age_bounds)
    bars = [np.nanmean(p_age[band == k, k]) if (band == k).any() else 0.5 for k in range(3)]
    for r, b_, p in zip(per.itertuples(), band, p_age):
        edge = min(age_bounds, key=lambda e: abs(r.age - (e - 0.5)))  # 29 and 30 are both 1 year from the 30 edge
        near = edge - near_edge <= r.age < edge + near_edge
        if near:
            other = b_ + (1 if r.age < edge else -1)
            po = p[other]
            suggested = _nearest_age(r.age, other, age_bounds) if po > p[b_] else r.age
            rows.append((r.person, "age", str(r.age), str(suggested), po,
                         f"age {r.age} is near the {edge} edge; P({names[other]})={po:.2f}, "
                         f"P({names[b_]})={p[b_]:.2f}", "edge"))
        elif not np.isnan(p).any():
            top = int(np.argmax(p))
            if top != b_ and p[top] >= bars[top]:
                rows.append((r.person, "age", str(r.age), str(_nearest_age(r.age, top, age_bounds)), p[top],
                             f"looks {names[top]} (p={p[top]:.2f}; bar {bars[top]:.2f}), given {names[b_]}", "age"))
    queue = pd.DataFrame(rows, columns=QUEUE_COLUMNS)
    queue["score"] = queue["score"].astype(float).round(4)
    order = queue["check"].eq("edge").astype(int)
    queue = queue.assign(_o=order).sort_values(["_o", "score"], ascending=[True, False], na_position="last")
    return queue.drop(columns="_o").reset_index(drop=True)


def run_finder(cfg, run: str | Path | None = None, out_dir: str | Path | None = None,
               near_edge: int = 2) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Headless finder on cfg.data_dir (cfg.relabel_file applied, so reviewed labels are what gets checked): OOF
    probabilities from `run` (a fold=-1 run folder or an oof.csv) or else from `probe_oof`; writes queue.csv and
    oof.csv (path, p0..p17) into out_dir when given. Returns (queue, table, probs)."""
    from mcls.data.faces import CropSettings
    from mcls.data.table import load_train_table
    from mcls.infer.face_expert import descriptor_settings
    from mcls.io import write_csv

    table = load_train_table(cfg.data_dir, cfg.age_bounds, cfg.train_old_age, cfg.relabel_file or None)
    if run:
        probs = load_oof(run, table)
    else:
        probs = probe_oof(table, cfg.n_folds, cfg.seed, device=cfg.device, crop=CropSettings.from_config(cfg),
                          face_settings=descriptor_settings(cfg))
    queue = find_suspects(table, probs, cfg.age_bounds, near_edge)
    if cfg.relabel_file:  # a label someone already decided on (even "keep") is not asked about again
        done = read_relabels(cfg.relabel_file)
        decided = set(zip(done["id"], done["field"]))
        queue = queue[[k not in decided for k in zip(queue["person"], queue["field"])]].reset_index(drop=True)
    if out_dir:
        oof = pd.concat([table[["path"]], pd.DataFrame(probs.round(5), columns=PROB_COLUMNS)], axis=1)
        write_csv(Path(out_dir) / "oof.csv", oof)
        write_csv(Path(out_dir) / "queue.csv", queue)
    return queue, table, probs


def _nearest_age(age: int, band: int, age_bounds) -> int:
    """The age inside `band` closest to `age`: the smallest change that moves a person into that band."""
    lo, hi = age_bounds
    return int(np.clip(age, *[(0, lo - 1), (lo, hi - 1), (hi, 120)][band]))


def person_strip(table: pd.DataFrame, person: str, probs: np.ndarray | None = None,
                 age_bounds=(30, 60)) -> pd.DataFrame:
    """A person's images in file order (mask1..5, incorrect_mask, normal): path, stem, given and predicted
    mask / gender / age band as names, and the predicted class's probability; the rows of an image strip."""
    rows = table.index[table["person"].astype(str) == str(person)]
    if not len(rows):
        raise KeyError(f"no person {person!r} in the table")
    t = table.loc[rows]
    ages = age_band_names(age_bounds)
    out = pd.DataFrame({"path": t["path"].to_numpy(), "stem": t["stem"].to_numpy(),
                        "given_mask": [MASK_STATES[m] for m in t["mask"]],
                        "given_gender": [GENDERS[g] for g in t["gender"]],
                        "given_age": [f"{a} ({ages[b]})" for a, b in zip(t["age"], t["age_band"])]})
    if probs is not None:
        p = probs[rows]
        cls = np.nan_to_num(p, nan=-1).argmax(1)
        m, g, a = decode(cls)
        out["pred_mask"] = [MASK_STATES[k] for k in m]
        out["pred_gender"] = [GENDERS[k] for k in g]
        out["pred_age"] = [ages[k] for k in a]
        out["p_pred"] = p[np.arange(len(p)), cls].round(3)
    order = {stem: i for i, stem in enumerate(FILE_MASK)}
    return out.sort_values("stem", key=lambda s: s.map(order)).reset_index(drop=True)
