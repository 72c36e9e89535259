"""Quality ablation: trains config variants on person-held-out folds and tabulates what each one buys.

    .venv/bin/python bench/quality.py                                      # the whole committed table (RECIPE)
    .venv/bin/python bench/quality.py --variants lite1,old58 --folds 0     # a quick screen
    .venv/bin/python bench/quality.py --variants default --folds all       # confirm on the 5 folds

Every variant is a set of config overrides on PLAIN (the plain fine-tune the kit started from), or, for the
ON_DEFAULT ones ("default+..."), on the package's defaults. Each
(variant, fold) trains into runs/quality/<variant>-<config hash>/fold<k>; a finished fold is reused and an
interrupted one resumes from its last epoch, so the command can be re-run after a crash or with more folds.
Inference-only options (flip TTA, person-consistent inference) are scored through the package's serving
(mcls.infer.serving) from the predictions training saved (both flip views and the blind groups), as rows
"<variant> +tta" and "<variant> +tta +persons"; a variant run on 2+ folds also gets "+tta +persons +calib", the
age-band bias of mcls.infer.calibration fitted on its other folds (nested). Fold 0 also gets the mask head's accuracy
under shifts. ENSEMBLES are served as one run averaging their members, without training anything.

Writes bench/results/quality.{md,csv} (one row per variant: mean and spread over the folds it ran),
quality_folds.csv (one row per fold), quality_robustness.csv and quality.png (macro F1 vs training time).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REALMASK = ROOT.parent / "shared" / "data" / "realmask-dev" / "labels.csv"  # development photos, never trained on
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import ActiveClock, machine  # noqa: E402

from mcls.analysis.robustness import mask_robustness, real_mask_scores
from mcls.config import ONE_BACKBONE, Config
from mcls.data.table import read_persons
from mcls.infer import face_expert
from mcls.infer.calibration import apply_age_bias, fit_age_bias
from mcls.infer.face_expert import fit_run_experts
from mcls.infer.persons import consistency_scores
from mcls.infer.serving import Serving
from mcls.io import write_json
from mcls.labels import decode
from mcls.metrics import epoch_choice_scores, macro_f1, score
from mcls.model.checkpoint import load_checkpoint
from mcls.model.classifier import head_probs
from mcls.runs.layout import Run
from mcls.runtime.device import Runtime
from mcls.train.run import fit_fold, load_training_data

# The plain fine-tune: packaged ImageNet weights, 128 px, three CE heads, AdamW + cosine, light aug.
# Every training key the defaults may move is pinned, so a variant differs from PLAIN by its own overrides only.
PLAIN = dict(backbone="tf_efficientnet_lite0", pretrained="offline", img_size=128, heads="multi", loss="ce",
             augment="light", age_head="band", train_old_age=60, sampler="uniform", ema_decay=0.0,
             wear_per_person=5, epochs=6, batch_size=32, lr=1e-3, tta=False, person_consistent=False, **ONE_BACKBONE)

# The package's model keys until 2026-12-03: one backbone, three heads, no mixing (mcls.config.ONE_BACKBONE). The
# "default+..." variants below were measured on it; pinning it keeps what they train, and their rows' meaning, now
# that the defaults give the mask task a backbone of its own. "multi-default" is that default itself.
MULTI_DEFAULT = {"heads": "multi", **ONE_BACKBONE}

VARIANTS = {
    "plain": {},
    "scratch": dict(pretrained="none"),
    "single-head": dict(heads="single"),
    "age-dist": dict(age_head="dist"),
    "age-both": dict(age_head="both"),
    "old58": dict(train_old_age=58),
    "weighted-ce": dict(loss="weighted_ce"),
    "focal": dict(loss="focal"),
    "label-smoothing": dict(loss="label_smoothing"),
    "f1-loss": dict(loss="f1"),
    "balanced": dict(sampler="balanced"),
    "ema": dict(ema_decay=0.995),
    "vcutmix": dict(mix="vcutmix"),
    "cutmix": dict(mix="cutmix"),
    "mixup": dict(mix="mixup"),
    "strong-aug": dict(augment="strong"),
    "robust-aug": dict(augment="robust"),
    "lite1": dict(backbone="tf_efficientnet_lite1"),
    "lite2": dict(backbone="tf_efficientnet_lite2"),
    "mobilenetv2": dict(backbone="mobilenetv2_100"),
    "160px": dict(img_size=160),
    "old59": dict(train_old_age=59),
    "wear2": dict(wear_per_person=2),
    "wear2-160px": dict(wear_per_person=2, img_size=160),
    "ema-wear2-160px": dict(ema_decay=0.995, wear_per_person=2, img_size=160),
    "age-weight2": dict(loss_weights=[1.0, 1.0, 2.0]),
    "age-dist-wear2": dict(age_head="dist", wear_per_person=2),  # a cheap exact-age member beside wear2
    "pseudo-val": dict(pseudo_label="validation", pseudo_run="@plain", pseudo_threshold=0.9),
    "default": None,  # the package's Config() defaults, whatever they are now
}

# Variants of the package's defaults rather than of PLAIN: what the shipped config gains from one more switch (these
# on the multi-head default of their time, MULTI_DEFAULT).
ON_MULTI_DEFAULT = {
    "multi-default": {},
    "default+pseudo-val": dict(pseudo_label="validation", pseudo_run="@multi-default", pseudo_threshold=0.9),
    "default+lite1": dict(backbone="tf_efficientnet_lite1"),
    "default+seed7": dict(train_seed=7),  # the default again on the same folds: seed noise, and a seed ensemble
    "default+age-dist": dict(age_head="dist"),  # the exact-age head helped the plain and wear2 recipes: on the default?
    "default+near-edge3": dict(near_edge_drop=3),  # the winner's trick: no 27-29 or 57-59 year-olds in training
    "default+vcutmix-fixed": dict(mix="vcutmix_fixed"),  # the winner's left/right cut at 46-54% of the width
    "default+robust-aug": dict(augment="robust"),  # real photos' mask state: recoloured masks, chin cuts, low light
    # the winner's per-task models: one backbone per task, the mask task's at 96 px (mask state needs little detail)
    "default+separate": dict(heads="separate", mask_size=96),
    # per-task models whose mask task alone trains on the left/right cut (vcutmix_fixed lifted real-photo mask F1 but
    # cost age and gender on a shared backbone): the real-photo mask target without the age price
    "default+separate-maskmix": dict(heads="separate", mask_size=96, mix="vcutmix_fixed", mix_tasks="mask"),
    # and its mask backbone sees faces shrunk and moved in frame (mask_view=reframe): real crops are looser than the
    # data's, and the maskmix model read MaskedFace-Net's worn masks as 'incorrect' (53 of 96 on fold 0)
    "default+separate-maskmix-reframe": dict(heads="separate", mask_size=96, mix="vcutmix_fixed", mix_tasks="mask",
                                             mask_view="reframe"),
    # its mask backbone at 128 px: on the mask screen's 5 folds (bench/mask_screen.py) real-photo mask F1 0.885 vs
    # 0.861, MaskedFace-Net's uncovered noses read far better; gender and age backbones are untouched by it
    "default+separate-maskmix-reframe128": dict(heads="separate", mask_size=128, mix="vcutmix_fixed", mix_tasks="mask",
                                                mask_view="reframe"),
    # the face probe's gender suspects reviewed by eye (3 of 8 flipped); scored on the labels as given, like eval
    "default+relabel": dict(relabel_file="data/relabel/utkmask-gender.csv"),
}
# External face-age photos, given as --data is (relative to the repository root), never trained as competition data.
EXTERNAL = "../shared/data/utkface-extra"
ON_DEFAULT = {
    **{name: {**MULTI_DEFAULT, **keys} for name, keys in ON_MULTI_DEFAULT.items()},
    # on the default of 2026-12-03 (mask apart): its gender/age backbone pretrained once on the external adults that
    # pass the leak guard (mcls.train.pretrain), then every fold as the default trains it
    "default+external": dict(external_data=EXTERNAL),
    # the same guarded adults in every fold's batches instead (half as many as the competition rows an epoch,
    # drawn anew; their mask loss ignored: mcls.train.joint), no pretraining
    "default+external-joint": dict(external_data=EXTERNAL, external_training="joint"),
    # the default again on the same folds with another training seed: training noise (mcls compare's seed spread),
    # and with the default, a fold average that no scored person trained (its serving judged as submitted)
    "default+train-seed7": dict(train_seed=7),
    # the default until 2026-12-08, served (and its epoch chosen) with flip TTA + person sharing: the 5-fold runs
    # that decided the default's serving (bench/results/decisions.md); "default" is the package's defaults now
    "default+served": {},
}
# The serving keys every ON_DEFAULT variant was trained with (the package's defaults until 2026-12-08)
SERVED_AS_TRAINED = {"tta": True, "person_consistent": True}

# Averages of variants' validation probabilities (every variant splits its folds with seed 42, so fold k is the same
# persons in each): what ensembling different models buys, from runs already trained.
ENSEMBLES = {"multi-default & plain": ("multi-default", "plain"),
             "multi-default & default+seed7": ("multi-default", "default+seed7"),
             # chosen on folds 0-1
             "multi-default & plain & vcutmix & age-dist": ("multi-default", "plain", "vcutmix", "age-dist"),
             # the quality preset: the ensemble selection's choice on all 5 folds (in-sample; the nested row is honest)
             "multi-default & age-dist & plain & default+seed7": ("multi-default", "age-dist", "plain",
                                                                  "default+seed7"),
             "multi-default & plain & vcutmix & age-dist & mobilenetv2": ("multi-default", "plain", "vcutmix",
                                                                            "age-dist", "mobilenetv2"),
             # two cheaper models whose training together costs about the default's: an ensemble within the budget
             "mobilenetv2 & wear2": ("mobilenetv2", "wear2"),
             "wear2 & age-dist-wear2": ("wear2", "age-dist-wear2")}  # the other within-budget pair

# Ensemble selection for a run with members: the default model, then greedy forward selection of members (one
# variant at a time, while the mean macro F1 rises), nested: each fold's members are chosen on the other folds only,
# so its row estimates what choosing members from this pool buys on unseen persons. The choice on all folds is what
# the quality preset ships.
SELECTION_POOL = ("multi-default", "plain", "default+seed7", "vcutmix", "age-dist", "mobilenetv2", "wear2")
SELECTION_MAX = 4  # models, the default included

# What bench/results/quality.md was made of: 5-fold confirmations first, then the fold-0 (or 2-fold) screens.
RECIPE = [("plain,multi-default", "all"),
          ("default+pseudo-val", "all"),  # its teachers are the default's fold models
          ("default+seed7", "all"),
          ("vcutmix,age-dist,mobilenetv2", "all"),  # members of the quality preset's ensemble (and a candidate)
          ("wear2", "all"),  # with mobilenetv2: the within-budget ensemble
          ("age-dist-wear2", "all"),  # with wear2: another within-budget pair
          ("old58", "0,1"),
          ("ema,wear2-160px,age-both,balanced,robust-aug,default+lite1", "0"),  # ema-wear2-160px is the default
          ("default+age-dist", "0"),  # a candidate default; stopped after fold 0 (below the default there)
          # the remaining switches, one fold each: losses, heads, weights, mixing, augmentation, edges, size
          ("focal,label-smoothing,weighted-ce,f1-loss,single-head,scratch,cutmix,mixup,age-weight2,old59,strong-aug",
           "0"),  # 160px and lite2 are defined but not screened yet (time)
          # the issue-22 levers on the current default (2026-12-01; run with --face-prior for the +face rows)
          ("default+near-edge3,default+vcutmix-fixed,default+relabel", "0,1"),
          ("default+robust-aug,default+separate", "0"),
          ("default+separate-maskmix", "0,1,2"),
          ("default+separate-maskmix-reframe", "all"),  # the per-task preset until 2026-12-02, 5 folds
          ("default+separate-maskmix-reframe128", "0"),  # its mask task at 128 px: 5 folds on the mask screen
          # the default since 2026-12-03: the mask task in a mobilenetv2 of its own at 112 px (reframed, left/right
          # cut; chosen on bench/mask_screen.py), gender and age sharing lite0 at 160 px
          ("default", "all"),
          # external face-age data (utkface-extra, leak-guarded): pretraining once, and joint training
          ("default+external", "all"),
          ("default+external-joint", "0,1")]  # stopped after fold 1 for time


def variant_config(name: str, data_dir: str, runs: Path) -> Config:
    """The variant's config; a value "@other" names the run folder of variant `other` (a pseudo-label teacher)."""
    if name in ON_DEFAULT:
        # served (and, since 2026-12-07, the epoch chosen) as the defaults of their day: flip TTA + person sharing
        base = {**SERVED_AS_TRAINED, **ON_DEFAULT[name]}
    elif name in VARIANTS:
        base = {} if VARIANTS[name] is None else {**PLAIN, **VARIANTS[name]}
    else:
        raise SystemExit(f"unknown variant {name!r}; known: {', '.join([*VARIANTS, *ON_DEFAULT])}")
    for key, value in base.items():
        if isinstance(value, str) and value.startswith("@"):
            base[key] = str(run_folder(value[1:], data_dir, runs))
    return Config().updated({**base, "data_dir": data_dir, "fold": 0, "n_folds": 5, "seed": 42})


def run_folder(name: str, data_dir: str, runs: Path) -> Path:
    """runs/<variant>-<hash>; a variant whose config another variant already trained (e.g. "default" once the
    defaults became a measured variant) reuses that folder, and its rows keep the first variant's name."""
    digest = config_hash(variant_config(name, data_dir, runs))
    same = sorted(Path(runs).glob(f"*-{digest}"))
    return same[0] if same else Path(runs) / f"{name}-{digest}"


# Keys that do not change what a fold trains or how the bench scores it (TTA, person grouping and calibration are
# scored every way regardless).
NOT_HASHED = ("run_dir", "fold", "tracker", "image_cache", "crop_cache", "pretrain_cache", "num_workers", "compile", "device", "amp_dtype",
              "tta", "person_consistent", "calibrate_age", "cam_method", "cam_images", "sync_bn", "relabel_decisions", "smoke",
              "reference_run")
# Keys added to Config after folds were run, at the value that reproduces the old training: left out of the hash
# at that value, so finished folds stay valid.
NEUTRAL = {"wear_per_person": 5, "pseudo_label": "none", "train_seed": -1, "members": [], "mask_backbone": "",
           "mask_size": 0, "mix_tasks": "all", "mask_view": "none", "external_data": "", "external_min_age": 18,
           "external_epochs": 5, "external_threshold": 0.3, "external_training": "pretrain", "external_share": 0.5,
           "max_image_megapixels": 64.0}
# tta and person_consistent choose the epoch since 2026-12-07 (served_f1) but stay out of the hash, so that every
# recorded run keeps its folder: "default" (served as is since 2026-12-08) and "default+served" share one. Train a
# new default into another --runs folder rather than reuse that one (its folds chose on TTA + persons).


def config_hash(cfg: Config) -> str:
    keep = {k: v for k, v in cfg.to_dict().items()
            if k not in NOT_HASHED and NEUTRAL.get(k, object()) != v
            and not (k.startswith("pseudo_") and cfg.pseudo_label == "none")}
    if keep.get("pseudo_run"):  # the teacher by its folder name, so --runs may be given relative or absolute
        keep["pseudo_run"] = Path(keep["pseudo_run"]).name
    return hashlib.sha1(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:8]


class DataCache:
    """Decoded images per (size, crop): variants at one size share one decode."""

    def __init__(self):
        self.cache = {}

    def get(self, cfg: Config):
        key = (cfg.data_dir, cfg.img_size, cfg.crop, cfg.train_old_age, tuple(cfg.age_bounds), cfg.relabel_file)
        if key not in self.cache:
            self.cache = {key: load_training_data(cfg)}  # keep one: utkmask at 160 px is 0.5 GB
        return self.cache[key]


def served(runs, tta: bool, persons: bool) -> dict:
    """{fold: OutOfFold} of one variant's run (or several, averaged) as the package serves it, without an age bias
    and without ensemble members; scored from the predictions training saved."""
    return Serving.resolve(runs, {"tta": tta, "person_consistent": persons, "calibrate_age": False},
                           members=False).oof()


def run_fold(cfg: Config, fold: int, run_dir: Path, data: DataCache, robustness: bool) -> dict:
    """Trains (or reuses) one fold and scores its best checkpoint with and without TTA and persons."""
    out = Run(run_dir).fold(fold)
    done = out.dir / "bench.json"
    if done.exists():
        return json.loads(done.read_text())
    table, images = data.get(cfg)
    timing_file = out.dir / "timing.json"
    spent = json.loads(timing_file.read_text()) if timing_file.exists() else {"wall_s": 0.0, "cpu_s": 0.0}
    clock, cpu0 = ActiveClock(), _cpu_seconds()
    fitted = fit_fold(cfg, table, images, fold, out, resume=True)
    spent = {"wall_s": spent["wall_s"] + clock.seconds(), "cpu_s": spent["cpu_s"] + _cpu_seconds() - cpu0,
             "finished": time.time()}
    write_json(timing_file, spent)

    result = {"fold": fold, **spent, "best_epoch": json.loads(out.summary.read_text())["best_epoch"],
              "n_pseudo": fitted["n_pseudo"], "n_external": fitted["n_external"]}
    for tag, tta in (("", False), ("+tta", True)):
        scored = served(run_dir, tta, persons=False)[fold]
        result.update({f"{k}{tag}": v for k, v in score(scored.labels, scored.probs).items()})
    shared = served(run_dir, True, persons=True)[fold]
    pc = consistency_scores(shared.labels, shared.probs, shared.table["group"].to_numpy(),
                            shared.table["person"].to_numpy(dtype=str))
    result.update({f"{k[3:]}+tta+persons" if k.startswith("pc_") else k: v for k, v in pc.items()})
    if robustness:
        is_val = (table["fold"] == fold).to_numpy()
        rt = Runtime.from_config(cfg)
        model = rt.prepare(load_checkpoint(out.best, rt.device)[0])
        rob = mask_robustness(model, images[is_val], table.loc[is_val, "mask"].to_numpy(), rt)
        rob.to_csv(out.dir / "robustness.csv", index=False)
    write_json(done, result)
    return result


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def summarise(folds: pd.DataFrame) -> pd.DataFrame:
    """One row per variant and inference mode: mean, spread and count over the folds run."""
    rows = []
    for name, g in folds.groupby("variant", sort=False):
        for tag in ("", "+tta", "+tta+persons", "+tta+persons+calib", "+tta+persons+face"):
            if f"f1{tag}" not in g or g[f"f1{tag}"].isna().any():
                continue
            label = f"{name} {tag.replace('+', ' +').strip()}".strip()

            def m(key):
                return g[f"{key}{tag}"].mean()

            rows.append({"variant": label, "folds": len(g), "f1": m("f1"), "f1_std": g[f"f1{tag}"].std(ddof=0),
                         "f1_min": g[f"f1{tag}"].min(),
                         "acc": m("acc"), "acc_mask": m("acc_mask"), "acc_gender": m("acc_gender"),
                         "acc_age": m("acc_age"), "f1_age": m("f1_age"), "f1_old": m("f1_old"),
                         "group_ari": g["group_ari"].mean() if "persons" in tag else np.nan,
                         "train_min_per_fold": g["wall_s"].mean() / 60, "cpu_min_per_fold": g["cpu_s"].mean() / 60,
                         "pretrain_min_once": g["pretrain_s"].mean() / 60 if "pretrain_s" in g else np.nan,
                         "best_epoch": g["best_epoch"].mean(),
                         # the epoch choice's optimism, per image without TTA: chosen by each fold on its own
                         # persons, the last epoch, chosen on the other folds (honest)
                         **{k: (g[k].mean() if tag == "" and k in g else np.nan)
                            for k in ("sel_own_f1", "sel_last_f1", "sel_other_f1")},
                         # the mask head on real photos (realmask-dev; flip TTA, each fold's model alone)
                         **{k: (g[k].mean() if k in g else np.nan)
                            for k in ("real_mask_f1", "real_f1_wear", "real_f1_incorrect", "real_f1_not_wear")}})
    return pd.DataFrame(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/utkmask")
    ap.add_argument("--variants", help="comma list of VARIANTS names (default: every RECIPE step)")
    ap.add_argument("--folds", default="0,1", help="comma list of the 5 folds, or 'all' (with --variants)")
    ap.add_argument("--runs", default="runs/quality")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--face-prior", action="store_true",
                    help="add '+tta +persons +face' rows: each run's dlib face experts (fitted where missing), their "
                         "weight chosen on the other folds")
    ap.add_argument("--realmask", default=str(REALMASK) if REALMASK.is_file() else None,
                    help="labels.csv of real photos with mask states (default: ../shared/data/realmask-dev, if there)")
    args = ap.parse_args(argv)
    steps = RECIPE if args.variants is None else [(args.variants, args.folds)]
    data = DataCache()
    command = " ".join([".venv/bin/python", "bench/quality.py", *(argv or sys.argv[1:])])
    for variants, fold_list in steps:
        for name in variants.split(","):
            run_variant(name, parse_folds(fold_list), args, data)
            write_tables(Path(args.runs), Path(args.out), command,
                         run_folder("default", args.data, Path(args.runs)).name, args.data, args.realmask,
                         args.face_prior)


def parse_folds(text: str) -> list[int]:
    return list(range(5)) if text == "all" else [int(f) for f in text.split(",")]


def run_variant(name: str, folds: list[int], args, data: DataCache) -> None:
    cfg = variant_config(name, args.data, Path(args.runs))
    run_dir = run_folder(name, args.data, Path(args.runs))
    run_dir.mkdir(parents=True, exist_ok=True)
    if not Run(run_dir).config_file.exists():
        Run(run_dir).config_file.write_text(cfg.to_yaml())
    if cfg.external_data:  # once, before the folds, so that their minutes leave the one-off pretraining out
        from mcls.train.pretrain import external_lines, prepare_external

        prepare_external(cfg, Run(run_dir))
        print("\n".join(external_lines(Run(run_dir))), flush=True)
    for k in folds:
        res = run_fold(cfg, k, run_dir, data, robustness=(k == 0))
        print(f"{name} fold {k}: f1 {res['f1']:.4f}  +tta {res['f1+tta']:.4f}  +persons "
              f"{res['f1+tta+persons']:.4f}  ({res['wall_s'] / 60:.1f} min)", flush=True)


def collect(runs: Path, data_dir: str, realmask: str | None = None, face_prior: bool = False
            ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Every finished fold under runs/ (whatever command produced it), with the variant named by its folder, the
    ENSEMBLES' and the nested selection's folds; the robustness rows; the selection's choice on all folds. With
    `realmask` (a labels.csv of real photos), each fold model's mask scores on them, computed once into bench.json."""
    folds, robust = [], []
    for done in sorted(runs.glob("*/fold*/bench.json")):
        name = done.parent.parent.name.rsplit("-", 1)[0]
        record = json.loads(done.read_text())
        if realmask and "real_mask_f1" not in record:
            record.update(real_mask_scores(done.parent / "best.pt", realmask))
            write_json(done, record)
        pretrained = Run(done.parent.parent).external_record
        if pretrained.is_file():  # the one-off pretraining on external faces, outside every fold's minutes
            record["pretrain_s"] = json.loads(pretrained.read_text()).get("pretrain_seconds", np.nan)
        folds.append({"variant": name, "run": done.parent.parent.name, **record})
        rob = done.parent / "robustness.csv"
        if rob.exists():
            robust.append(pd.read_csv(rob).assign(variant=name, run=done.parent.parent.name))
    folds, shipped = pd.DataFrame(folds), []
    if not folds.empty:
        folds = folds.merge(calibrated_scores(runs), on=["run", "fold"], how="left")
        if face_prior:
            folds = folds.merge(face_scores(runs), on=["run", "fold"], how="left")
        folds = folds.merge(epoch_choice(runs, folds), on="run", how="left")
        selected, shipped = selection_folds(runs, data_dir, folds)
        folds = pd.concat([folds, ensemble_folds(runs, data_dir, folds), selected], ignore_index=True)
    return folds, (pd.concat(robust) if robust else pd.DataFrame()), shipped


def epoch_choice(runs: Path, folds: pd.DataFrame) -> pd.DataFrame:
    """Per run: its folds' per-epoch validation F1 at the epoch each fold chose itself (optimistic), at the last
    epoch, and at the epoch the run's other folds chose (honest; mcls.metrics.epoch_choice_scores)."""
    rows = []
    for run, g in folds.groupby("run"):
        histories = {int(k): pd.read_csv(runs / run / f"fold{int(k)}" / "metrics.csv") for k in g["fold"]}
        s = epoch_choice_scores(histories)
        rows.append({"run": run, **{k: s.get(k, np.nan) for k in ("sel_own_f1", "sel_last_f1", "sel_other_f1")}})
    return pd.DataFrame(rows, columns=["run", "sel_own_f1", "sel_last_f1", "sel_other_f1"])


def calibrated_scores(runs: Path) -> pd.DataFrame:
    """Per fold: +tta +persons predictions with the age-band bias fitted on the run's other folds (nested, so the
    score is out of sample); runs with fewer than two folds get none."""
    rows = []
    for run in sorted(p for p in runs.iterdir() if Run(p).config_file.is_file()):
        rows += nested_calibration(run.name, {k: (f.labels, f.probs) for k, f in served(run, True, True).items()})
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["run", "fold", "f1+tta+persons+calib"])


def face_scores(runs: Path) -> pd.DataFrame:
    """Per fold: +tta +persons with the dlib face expert blended in (mcls.infer.face_expert), its weight chosen on the
    run's other folds (nested: the weight that scored best there); runs with fewer than two folds get none. Fits
    the runs' experts first where missing."""
    rows = []
    for run in sorted(p for p in runs.iterdir() if Run(p).config_file.is_file()):
        if len(Run(run).scored_folds) < 2:
            continue
        if not all(f.face_expert.is_file() for f in Run(run).folds):
            fit_run_experts(Run(run))
        by_weight = {w: {k: score(f.labels, f.probs) for k, f in
                         Serving.resolve(run, {"tta": True, "person_consistent": True, "calibrate_age": False,
                                               "face_weight": w}, members=False).oof().items()}
                     for w in face_expert.WEIGHTS}
        for k in by_weight[0.0]:
            w = max(face_expert.WEIGHTS, key=lambda w: np.mean([s["f1"] for j, s in by_weight[w].items() if j != k]))
            rows.append({"run": run.name, "fold": k, "face_weight": w,
                         **{f"{m}+tta+persons+face": v for m, v in by_weight[w][k].items()}})
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["run", "fold", "f1+tta+persons+face"])


def nested_calibration(run: str, by_fold: dict) -> list[dict]:
    """{fold: (labels, shared probabilities)} -> per-fold scores with the age bias fitted on the other folds."""
    if len(by_fold) < 2:
        return []
    fit = fit_age_bias(list(by_fold.values()))
    return [{"run": run, "fold": k, "age_bias": str(nested["bias"]),
             **{f"{m}+tta+persons+calib": v for m, v in nested["after"].items()}}
            for k, nested in zip(by_fold, fit["nested"])]


def ensemble_folds(runs: Path, data_dir: str, folds: pd.DataFrame) -> pd.DataFrame:
    """Per fold that all members finished: their +tta probabilities averaged, then person sharing (the first
    member's blind groups) and nested calibration, as prediction serves the ensemble. Training time is the
    members' sum."""
    rows = []
    for name, members in ENSEMBLES.items():
        dirs = [run_folder(m, data_dir, runs) for m in members]
        if not all(Run(d).config_file.is_file() for d in dirs):
            continue
        by_fold, fold_rows = {}, []
        for k, f in served(dirs, True, True).items():
            by_fold[k] = (f.labels, f.probs)
            member = folds[folds["run"].isin([d.name for d in dirs]) & (folds["fold"] == k)]
            fold_rows.append({"variant": name, "run": name, "fold": k, "wall_s": member["wall_s"].sum(),
                              "cpu_s": member["cpu_s"].sum(), "best_epoch": np.nan,
                              "group_ari": member["group_ari"].iloc[0],
                              **{f"{m}+tta+persons": v for m, v in score(*by_fold[k]).items()}})
        if fold_rows:
            calibrated = nested_calibration(name, by_fold)
            rows.append(pd.DataFrame(fold_rows).merge(pd.DataFrame(calibrated), on=["run", "fold"], how="left")
                        if calibrated else pd.DataFrame(fold_rows))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def select_members(pool: dict[str, Path], folds: list[int]) -> list[str]:
    """Greedy forward selection on `folds`: the default, then whichever addition raises the mean macro F1 (+tta
    +persons, served as one run with those members: shared within the default's groups) most, until none does or
    SELECTION_MAX are in."""
    def mean_f1(names):
        scored = served([pool[n] for n in names], True, True)
        return np.mean([macro_f1(scored[k].labels, scored[k].probs.argmax(1)) for k in folds])

    chosen = ["multi-default"]
    best = mean_f1(chosen)
    while len(chosen) < SELECTION_MAX:
        trials = {n: mean_f1(chosen + [n]) for n in pool if n not in chosen}
        if not trials or max(trials.values()) <= best:
            break
        name = max(trials, key=trials.get)
        chosen, best = chosen + [name], trials[name]
    return chosen


def selection_folds(runs: Path, data_dir: str, folds: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Rows of the nested ensemble selection (members chosen on the other folds, scored on this one) and the
    members chosen on every fold; empty while fewer than two of SELECTION_POOL have all folds."""
    n_folds = Config().n_folds
    dirs = {n: run_folder(n, data_dir, runs) for n in SELECTION_POOL}
    pool = {n: d for n, d in dirs.items() if len(Run(d).scored_folds) == n_folds and Run(d).config_file.is_file()}
    if len(pool) < 2 or "multi-default" not in pool:
        return pd.DataFrame(), []
    rows = []
    for k in range(n_folds):
        others = [j for j in range(n_folds) if j != k]
        chosen = select_members(pool, others)
        scored = served([pool[n] for n in chosen], True, True)
        # the run's calibration is fitted on its members' average, on the other folds only here
        bias = fit_age_bias([(scored[j].labels, scored[j].probs) for j in others])["age_log_bias"]
        member = folds[folds["run"].isin([dirs[n].name for n in chosen]) & (folds["fold"] == k)]
        labels, probs = scored[k].labels, scored[k].probs
        rows.append({"variant": "ensemble selection (nested)", "run": "ensemble selection", "fold": k,
                     "members": " & ".join(chosen), "wall_s": member["wall_s"].sum(), "cpu_s": member["cpu_s"].sum(),
                     "best_epoch": np.nan, "group_ari": np.nan,
                     **{f"{m}+tta+persons": v for m, v in score(labels, probs).items()},
                     **{f"{m}+tta+persons+calib": v for m, v in score(labels, apply_age_bias(probs, bias)).items()}})
    return pd.DataFrame(rows), select_members(pool, list(range(n_folds)))


def age_by_edge_distance(run: Path, data_dir: str, bounds=(30, 60)) -> pd.DataFrame:
    """The age band's accuracy (+tta +persons) over the run's folds, by how far each true age lies from the nearest
    band edge: tells boundary noise (errors only near 30 and 60) from a coarse age estimate (errors far from them)."""
    ages = read_persons(data_dir).set_index("id")["age"].astype(int)
    rows = []
    for f in (served(run, True, True).values() if Run(run).config_file.is_file() else []):
        predicted = head_probs(torch.as_tensor(f.probs))["age"].numpy().argmax(1)
        age = ages.loc[f.table["person"].to_numpy(dtype=str)].to_numpy()
        rows.append(pd.DataFrame({"correct": predicted == decode(f.labels)[2],
                                  "years": np.min([abs(age - (b - 0.5)) for b in bounds], axis=0)}))
    if not rows:
        return pd.DataFrame()
    d = pd.concat(rows)
    d["years from 30 or 60"] = pd.cut(d["years"], [0, 3, 6, 10, 20, 200])
    return (d.groupby("years from 30 or 60", observed=True)["correct"].agg(age_acc="mean", images="size")
            .reset_index().astype({"years from 30 or 60": str}))


DEFAULT_MARK = " (= default)"


def _run_hash(runs: pd.Series) -> pd.Series:
    """The config hash a run folder's name ends with (runs/<variant>-<hash>); "" for ensemble rows."""
    return runs.astype(str).str.extract(r"-([0-9a-f]{8})$", expand=False).fillna("")


def named_by_config(folds: pd.DataFrame, data_dir: str, runs: Path) -> pd.Series:
    """Each row's variant; a "default" row whose run trained another config than Config() does now (recorded before
    the defaults changed) takes the name of the variant that config is (MULTI_DEFAULT's is "multi-default"). Every
    other variant pins what it trains, so only "default" changes meaning."""
    variant = folds["variant"].str.removesuffix(DEFAULT_MARK)
    trained = _run_hash(folds["run"])
    stale = (variant == "default") & (trained != config_hash(variant_config("default", data_dir, runs)))
    if not stale.any():
        return variant
    name_of = {config_hash(variant_config(n, data_dir, runs)): n for n in reversed([*ON_DEFAULT, *VARIANTS])
               if n != "default"}
    return variant.where(~stale, trained.map(lambda h: name_of.get(h, f"default of config {h}")))


def with_recorded(rows: pd.DataFrame, path: Path, key: str) -> pd.DataFrame:
    """`rows` plus the rows recorded in an earlier table at `path` whose `key` (run or variant) is not among them: a
    table is remade from the runs folder and what was measured before, so rows whose run folders are not on this
    machine (a fresh work tree, another machine) are kept as measured rather than dropped."""
    if not path.is_file():
        return rows
    recorded = pd.read_csv(path)
    if not rows.empty and key in rows:
        recorded = recorded[~recorded[key].isin(rows[key])]
    return pd.concat([rows, recorded], ignore_index=True) if not rows.empty else recorded


def write_tables(runs: Path, out: Path, command: str, default_run: str, data_dir: str,
                 realmask: str | None = None, face_prior: bool = False) -> None:
    folds, robust, shipped = collect(runs, data_dir, realmask, face_prior)
    folds = with_recorded(folds, out / "quality_folds.csv", "run")
    robust = with_recorded(robust, out / "quality_robustness.csv", "run")
    if folds.empty:
        return
    folds["variant"] = named_by_config(folds, data_dir, runs)
    if not robust.empty:
        robust["variant"] = named_by_config(robust, data_dir, runs)
    # the rows of the config Config() trains now, whichever variant name first trained it
    marked = (_run_hash(folds["run"]) == default_run.rsplit("-", 1)[-1]) & (folds["variant"] != "default")
    folds["variant"] = folds["variant"].where(~marked, folds["variant"] + DEFAULT_MARK)
    out.mkdir(parents=True, exist_ok=True)
    table = summarise(folds).sort_values("f1", ascending=False)
    table.to_csv(out / "quality.csv", index=False)
    folds.to_csv(out / "quality_folds.csv", index=False)
    text = (f"# Quality: person-held-out folds of {runs}\n\nmachine: {machine()}\n\n"
            "Rows collect every finished fold under the runs folder, whichever command trained it, and keep the rows "
            "recorded in quality_folds.csv whose run folders are not there; "
            "`.venv/bin/python bench/quality.py` with no arguments re-makes the whole table (its RECIPE: 5-fold "
            "confirmations, then the screens; finished folds are reused). "
            f"Last command: `{command}`\n\n"
            "`+calib`: the age-band prior bias (mcls/infer/calibration.py) scored on each fold after fitting it on the "
            "variant's other folds only. Mean over the folds run (`folds`), `f1_std` its spread; `train_min_per_fold` is wall time while the "
            "benchmark ran (pauses excluded), `cpu_min_per_fold` the process's CPU time (2 threads); "
            "`pretrain_min_once` the one-off pretraining of a variant with external data (its leak guard and "
            "decoding not included), which no fold's minutes hold.\n\n"
            + table.round(4).to_markdown(index=False) + "\n")
    if not robust.empty:
        robust.to_csv(out / "quality_robustness.csv", index=False)
        wide = robust.pivot_table(index="variant", columns="shift", values="acc_incorrect", sort=False)
        text += ("\n## Mask head under shifts (fold 0): accuracy on 'incorrect' images\n\n"
                 + wide.round(3).to_markdown() + "\n")
        wide = robust.pivot_table(index="variant", columns="shift", values="acc_mask", sort=False)
        text += "\n## Mask head under shifts (fold 0): accuracy over all mask states\n\n" + wide.round(3).to_markdown() + "\n"
    real = [c for c in folds.columns if c.startswith("real_")]
    if real:
        by_variant = folds.dropna(subset=["real_mask_f1"]).groupby("variant", sort=False)[real].mean()
        text += ("\n## Mask head on real photos (realmask-dev, never trained on; each fold's model, flip TTA)\n\n"
                 "Macro F1 over the three mask states, F1 per state, and macro F1 per source (see its README; only "
                 "andrewmvd's 13 'incorrect' photos are real masks worn wrongly).\n\n"
                 + by_variant.round(3).to_markdown() + "\n")
    chosen = folds.loc[folds["variant"] == "ensemble selection (nested)", ["fold", "members"]] \
        if "members" in folds else pd.DataFrame()
    if not chosen.empty:
        text += ("\n## Ensemble selection\n\nGreedy forward selection from " + ", ".join(SELECTION_POOL)
                 + f" (at most {SELECTION_MAX}; +tta +persons). Members chosen on the other folds, per held-out fold "
                 "(the row `ensemble selection (nested)` scores these):\n\n" + chosen.to_markdown(index=False)
                 + f"\n\nChosen on all folds (what a preset ships; in-sample): {' & '.join(shipped)}\n")
    edges = age_by_edge_distance(runs / default_run, data_dir)
    if not edges.empty:
        edges.to_csv(out / "quality_age_edges.csv", index=False)
    elif (out / "quality_age_edges.csv").is_file():
        edges = pd.read_csv(out / "quality_age_edges.csv")
    if not edges.empty:
        text += ("\n## Default: age-band accuracy (+tta +persons) by the true age's distance from a band edge\n\n"
                 + edges.round(3).to_markdown(index=False) + "\n")
    (out / "quality.md").write_text(text)
    plot(table, out / "quality.png")
    print(text, flush=True)


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    ax.errorbar(table["train_min_per_fold"], table["f1"], yerr=table["f1_std"], fmt="o", capsize=3)
    for _, r in table.iterrows():
        ax.annotate(r["variant"], (r["train_min_per_fold"], r["f1"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set(xlabel="training wall time per fold (min)", ylabel="validation macro F1 (mean over folds)",
           title="Quality vs training time")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
