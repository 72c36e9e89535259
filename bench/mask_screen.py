"""Mask-task screen: trains the mask backbone of a per-task model alone and scores it on real photos.

    .venv/bin/python bench/mask_screen.py --data ../shared/data/utkmask --candidates reframe,lowres --folds 0,1

A per-task model's mask backbone trains apart from the gender and age ones (its own batch view, mixer and head),
so what a change to the mask task's training buys on real photos can be screened at a sixth of the full run's
cost (5-8 minutes a fold on 2 CPU cores): the same data order, light augmentation, left/right cut on the mask
task, EMA and schedule as the `per-task` preset (bench/quality.py's default+separate-maskmix-reframe128), with a
CANDIDATE's overrides of the mask task (its input size among them). Each epoch's EMA weights are
scored on the fold's validation persons (mask accuracy) and on ../shared/data/realmask-dev (macro F1, per state
and per source: development photos, never trained on). A candidate that wins here is confirmed by training the
full per-task variant with bench/quality.py.

Writes bench/results/mask_screen_epochs.csv (every epoch and fold; rows of earlier commands are kept unless the same
candidate and fold ran again) and mask_screen.{md,csv}: each candidate's last epoch, averaged over its folds.
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
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
REALMASK = ROOT.parent / "shared" / "data" / "realmask-dev" / "labels.csv"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine

from mcls.analysis.robustness import real_mask_f1
from mcls.config import Config, parse_overrides, read_yaml_keys
from mcls.data.dataset import ImageArrayDataset, targets_of
from mcls.data.cache import load_images
from mcls.model.classifier import create_model, unit_float
from mcls.runtime.device import seed_everything
from mcls.train.augment import create_train_transform
from mcls.train.ema import ema_model
from mcls.train.steps import warmup_cosine
from mcls.train.mask_view import MaskView
from mcls.train.mixing import BatchMixer
from mcls.train.run import load_training_data
from mcls.train.sampling import epoch_order

# the per-task preset's keys (mcls/presets/per-task.yaml) on the package defaults
PER_TASK = read_yaml_keys("per-task")[1]
# overrides of the mask task's training, each on PER_TASK
CANDIDATES = {  # each names its mask size: the preset's changed from 96 to 128 px after this screen
    "reframe": dict(mask_size=96),  # the per-task preset until 2026-12-02
    "lowres": dict(mask_size=96, mask_view="reframe_lowres"),  # real crops are often small blurred faces; ours are sharp
    "128px": dict(mask_size=128),  # more detail for a nose left uncovered: the preset since 2026-12-02
    # the reframing alone: does the left/right cut still help the mask task?
    "nomix": dict(mask_size=96, mix="none", mix_tasks="all"),
    "mix1.0": dict(mask_size=96, mix_prob=1.0),  # the cut helps real photos: on every batch rather than half
    "cutmix": dict(mask_size=96, mix="cutmix"),  # patches of another face anywhere, not only its other half
    # 128 px reads uncovered noses but loses small blurred crowd faces: the resolution loss may win those back
    "128px_lowres": dict(mask_size=128, mask_view="reframe_lowres"),
    # a smaller mask backbone, so that a model with the mask task apart costs little more than one backbone:
    # mobilenetv2 trains about 2.5x as many images a second as lite0 at one size (bench/results/speed.md)
    "mnv2_112": dict(mask_size=112, mask_backbone="mobilenetv2_100"),
    "mnv2_128": dict(mask_size=128, mask_backbone="mobilenetv2_100"),
}


def mask_logits(net, x: torch.Tensor, size: int) -> torch.Tensor:
    """The mask head's logits for a batch at the cache's size, seen at `size` px as the per-task model sees it."""
    xf = F.interpolate(unit_float(x), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return net(xf)["mask"]


@torch.no_grad()
def mask_probs(net, images: np.ndarray, size: int, batch: int = 64) -> np.ndarray:
    """Flip-averaged mask probabilities of uint8 HWC images."""
    net.eval()
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2)
        p = mask_logits(net, x, size).softmax(-1) + mask_logits(net, x.flip(-1), size).softmax(-1)
        out.append((p / 2).numpy())
    return np.concatenate(out)


def score_row(name: str, k: int, epoch: int, seconds: float, val_p, val_mask, real_p, real) -> dict:
    """One table row: validation mask accuracy and real-photo F1 of mask probabilities."""
    return {"candidate": name, "fold": k, "epoch": epoch, "train_s": round(seconds, 1),
            "val_acc_mask": float((val_p.argmax(1) == val_mask).mean()),
            **real_mask_f1(real["mask"].to_numpy(), real_p.argmax(1), real["source"].to_numpy())}


def screen_fold(cfg: Config, table, images, real_images, real, k: int, name: str) -> tuple[list[dict], dict]:
    """Trains fold k's mask backbone as `cfg` says; one row per epoch (EMA weights), labelled `name`, and the last
    epoch's mask probabilities on the validation persons and the real photos (for soft votes of candidates)."""
    seed_everything(cfg.training_seed)
    is_val = (table["fold"] == k).to_numpy()
    train_t, train_x = targets_of(table[~is_val]), images[~is_val]
    persons = pd.factorize(table[~is_val]["person"])[0]
    val_x, val_mask = images[is_val], table[is_val]["mask"].to_numpy()
    # the mask task's backbone alone, as the package builds it; gender and age heads stay untrained
    net = create_model(cfg.mask_backbone or cfg.backbone, "multi", cfg.pretrained, cfg.drop_rate)
    ema = ema_model(net, cfg.ema_decay)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = warmup_cosine(cfg, optimizer, train_t, persons)
    mixer = BatchMixer(cfg.mix, cfg.mix_prob, cfg.mix_alpha)
    mask_view = MaskView(cfg.mask_view)
    ds = ImageArrayDataset(train_x, train_t, create_train_transform(cfg.augment))
    rows = []
    for epoch in range(cfg.epochs):
        epoch_seed = cfg.training_seed * 1000 + epoch
        seed_everything(epoch_seed)
        mixer.reseed(epoch_seed)
        mask_view.reseed(epoch_seed)
        order = epoch_order(train_t, epoch_seed, cfg.sampler, persons, cfg.wear_per_person)
        net.train()
        start = time.perf_counter()
        for b in range(0, len(order), cfg.batch_size):
            items = [ds[(int(i), epoch_seed)] for i in order[b:b + cfg.batch_size]]
            x = torch.stack([it[0] for it in items])
            y = torch.stack([it[1] for it in items])[:, 0]
            mixed, perm, lam = mixer(x)
            logits = mask_logits(net, mask_view(mixed), cfg.mask_size)
            loss = F.cross_entropy(logits, y)
            if perm is not None:
                loss = lam * loss + (1 - lam) * F.cross_entropy(logits, y[perm])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            ema.update_parameters(net)
        seconds = time.perf_counter() - start
        probs = {"val": mask_probs(ema.module, val_x, cfg.mask_size),
                 "real": mask_probs(ema.module, real_images, cfg.mask_size)}
        rows.append(score_row(name, k, epoch + 1, seconds, probs["val"], val_mask, probs["real"], real))
        print_row(rows[-1])
    return rows, probs


def print_row(row: dict) -> None:
    print(" ".join(f"{c}={v:.3f}" if isinstance(v, float) else f"{c}={v}" for c, v in row.items()), flush=True)


def vote_rows(vote: str, probs_dir: Path, table, real, epochs: pd.DataFrame) -> list[dict]:
    """Rows of a soft vote `A+B`: the members' last-epoch probabilities averaged, on every fold all of them ran."""
    members = vote.split("+")
    rows = []
    for k in sorted(table["fold"].unique()):
        files = [probs_dir / f"{m}_f{k}.npz" for m in members]
        if not all(f.exists() for f in files):
            continue
        saved = [np.load(f) for f in files]
        ran = epochs[epochs["candidate"].isin(members) & (epochs["fold"] == k)]
        last = ran[ran["epoch"] == ran.groupby("candidate")["epoch"].transform("max")]  # whose probabilities are saved
        val_mask = table[table["fold"] == k]["mask"].to_numpy()
        rows.append(score_row(vote, int(k), int(last["epoch"].max()), last["train_s"].sum(),
                              np.mean([s["val"] for s in saved], 0), val_mask,
                              np.mean([s["real"] for s in saved], 0), real))
        print_row(rows[-1])
    return rows


def merged(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """`old`'s rows with the candidate-folds that `new` holds replaced by it."""
    if new.empty or old.empty:
        return new if old.empty else old
    ran = old.set_index(["candidate", "fold"]).index.isin(new.set_index(["candidate", "fold"]).index)
    return pd.concat([old[~ran], new], ignore_index=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "utkmask"))
    ap.add_argument("--candidates", default=",".join(CANDIDATES), help=f"comma list of {', '.join(CANDIDATES)}")
    ap.add_argument("--folds", default="0,1")
    ap.add_argument("--real", default=str(REALMASK), help="CSV of path, mask, source (paths relative to it)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides of every candidate (e.g. a tiny backbone for a smoke run)")
    ap.add_argument("--vote", nargs="*", default=[], metavar="A+B",
                    help="soft votes of candidates' last epochs, scored on every fold whose members all ran")
    ap.add_argument("--probs", default=str(ROOT / "runs" / "mask_screen"),
                    help="folder of each candidate and fold's last-epoch probabilities, which the votes read")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "mask_screen"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    sets = parse_overrides(args.set)
    base = Config().updated({**PER_TASK, "data_dir": args.data, "device": "cpu", **sets})
    names = [n for n in args.candidates.split(",") if n]  # none: only score --vote from saved probabilities
    unknown = sorted(set(names + [m for v in args.vote for m in v.split("+")]) - set(CANDIDATES))
    if unknown:
        raise SystemExit(f"unknown candidate(s) {unknown}; known: {', '.join(CANDIDATES)}")
    # --set beats a candidate's own keys (a smoke run's tiny mask size too); built now, so a bad key fails before work
    configs = {name: base.updated(CANDIDATES[name], source=f"candidate {name}").updated(sets, source="--set")
               for name in names}
    table, images = load_training_data(base)
    real_csv = Path(args.real)
    real = pd.read_csv(real_csv)
    real_images = load_images([str(real_csv.parent / p) for p in real["path"]], base.img_size)[0]
    probs_dir = Path(args.probs)
    probs_dir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    command = "`.venv/bin/python bench/mask_screen.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`"
    for name in names:
        for k in (int(f) for f in args.folds.split(",")):
            fold_rows, probs = screen_fold(configs[name], table, images, real_images, real, k, name)
            np.savez(probs_dir / f"{name}_f{k}.npz", **probs)
            write_tables(out, pd.DataFrame(fold_rows), command)  # after every fold: a stopped screen keeps its rows
    votes = [pd.DataFrame(vote_rows(vote, probs_dir, table, real, read_epochs(out))) for vote in args.vote]
    print(write_tables(out, pd.concat(votes) if votes else pd.DataFrame(), command))


def read_epochs(out: Path) -> pd.DataFrame:
    epochs_csv = out.with_name(out.name + "_epochs.csv")
    return pd.read_csv(epochs_csv) if epochs_csv.exists() else pd.DataFrame()


def write_tables(out: Path, rows: pd.DataFrame, command: str) -> str:
    """Merges `rows` into the epochs table and re-makes the summary (each candidate's last epoch over its folds)."""
    df = merged(read_epochs(out), rows)
    df.to_csv(out.with_name(out.name + "_epochs.csv"), index=False)
    last = df[df["epoch"] == df.groupby(["candidate", "fold"])["epoch"].transform("max")]
    summary = last.drop(columns=["fold", "epoch"]).groupby("candidate", sort=False).mean().reset_index()
    summary.insert(1, "folds", last.groupby("candidate", sort=False)["fold"].apply(
        lambda f: ",".join(map(str, sorted(f)))).to_numpy())
    summary.to_csv(out.with_suffix(".csv"), index=False)
    text = (f"# Mask-task screen: the per-task model's mask backbone alone, last epoch\n\nmachine: {machine()}\n\n"
            f"Last command: {command}. Candidates are overrides of the per-task preset's mask task ({CANDIDATES}). "
            f"Real-photo columns are ../shared/data/realmask-dev (macro F1, per state, per "
            f"source); val_acc_mask is the fold's validation persons; train_s the last epoch's training seconds.\n\n"
            + summary.to_markdown(index=False, floatfmt=".3f") + "\n")
    out.with_suffix(".md").write_text(text)
    return text


if __name__ == "__main__":
    main()
