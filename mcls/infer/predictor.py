"""The predictor: fold ensembles (and ensembles of runs) scored over images with flip TTA, person sharing and the
age bias, in the order given."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from mcls.config import Config
from mcls.data.cache import cached_images
from mcls.data.dataset import ImageArrayDataset, make_loader
from mcls.data.faces import CropSettings
from mcls.infer.calibration import apply_age_bias, load_age_bias
from mcls.infer.persons import person_consistent
from mcls.model.checkpoint import load_checkpoint
from mcls.model.classifier import class_log_probs
from mcls.runs.layout import run_with_members
from mcls.runtime import distributed
from mcls.runtime.device import Runtime
from mcls.runtime.progress import progress


@torch.no_grad()
def predict_probs(models, loader, rt: Runtime, tta: bool = False, desc: str = "predict") -> np.ndarray:
    """(N, 18) class probabilities averaged over models (and flips), in the loader's (never shuffled) order."""
    models = models if isinstance(models, (list, tuple)) else [models]
    for m in models:
        m.eval()
    out, seen = [], []
    for x, _, idx in progress(loader, desc=desc):
        x = rt.to_input(x)
        if tta:  # flipped copies ride in the same batch
            x = torch.cat([x, x.flip(-1)])
        p = 0
        with rt.autocast():
            for m in models:
                p = p + class_log_probs(m(x)).exp()
        p = p / len(models)
        if tta:
            p = (p[: len(idx)] + p[len(idx):]) / 2
        out.append(p.float().cpu())
        seen.append(idx)
    seen = torch.cat(seen).numpy()
    expected = np.asarray(getattr(loader.dataset, "indices", np.arange(len(loader.dataset))))
    if len(seen) != len(expected) or not np.array_equal(seen, expected):
        raise RuntimeError(f"prediction scored {len(seen)} of {len(expected)} rows or out of order: refusing to "
                           "continue")
    return torch.cat(out).numpy()



def predict_dataset(models, dataset, rt: "Runtime", batch_size: int, tta: bool = False, num_workers: int = 0,
                    desc: str = "predict") -> np.ndarray:
    """predict_probs over a whole dataset; under torchrun each rank scores its share and all get every row.

    `batch_size` counts images per forward pass: with TTA the loader takes half as many, and their flips ride
    along, so TTA costs twice the work and not a slower batch size on top."""
    rows = distributed.shard(len(dataset))
    part = dataset if len(rows) == len(dataset) else Subset(dataset, rows)
    per_load = max(1, batch_size // 2) if tta else batch_size
    loader = make_loader(part, per_load, train=False, num_workers=num_workers, pin_memory=rt.pin_memory)
    return distributed.gather_concat(predict_probs(models, loader, rt, tta=tta, desc=desc))


def find_checkpoints(run: str | Path) -> list[Path]:
    """A checkpoint file itself, or every fold's best.pt inside a run folder (the fold ensemble)."""
    run = Path(run)
    if run.is_file():
        return [run]
    found = sorted(run.glob("fold*/best.pt"))
    if not found:
        raise FileNotFoundError(f"{run}: no fold*/best.pt checkpoints (is it a run folder from `mcls train`?)")
    return found



def load_ensemble(checkpoints, device) -> tuple[list, Config]:
    """Models from checkpoints that must agree on input size; returns (models, config of the first)."""
    models, cfgs = zip(*(load_checkpoint(p, device) for p in checkpoints))
    sizes = {c.img_size for c in cfgs}
    if len(sizes) > 1:
        raise ValueError(f"checkpoints disagree on img_size {sorted(sizes)}; ensemble models of one size")
    return list(models), cfgs[0]



def as_runs(run) -> list[Path]:
    """One run (a folder or a checkpoint file) or several: an ensemble of runs."""
    runs = [Path(run)] if isinstance(run, (str, Path)) else [Path(r) for r in run]
    if not runs:
        raise ValueError("no run given")
    return runs



def with_members(runs: list[Path]) -> list[Path]:
    """The runs with the ensemble members each one trained (config key `members`) after it, each once."""
    return list(dict.fromkeys(r.resolve() for run in runs for r in run_with_members(run)))



def predict_paths(paths, checkpoints, tta: bool | None = None, device: str = "auto", batch_size: int | None = None,
                  on_bad_image: str = "error", persons: bool | None = None,
                  age_bias=None) -> tuple[np.ndarray, list[int]]:
    """(N, 18) probabilities for image files, prepared exactly as validation images are. Never shuffles.

    tta / persons (person-consistent inference over these images) default to the run's config; `age_bias` (from
    calibration.load_age_bias) reweights the age bands last, where it was fitted."""
    return _predict(paths, [checkpoints], tta, device, batch_size, on_bad_image, persons,
                    lambda cfg, shared: age_bias)[:2]



def _predict(paths, members, tta, device, batch_size, on_bad_image, persons, age_bias_for):
    """predict_paths for one or more members (each a list of checkpoints: a run's fold ensemble), averaged with
    equal weight per member; each member sees the images at its own size and crop. Person groups and the defaults
    come from the first member's config, which is returned too; `age_bias_for(config, shared)` picks the bias for
    predictions shared within person groups or not."""
    rt = Runtime(Config(device=device))
    probs, bad, first = [], set(), None
    for checkpoints in members:
        models, cfg = load_ensemble(checkpoints, rt.device)
        # the run's own crop settings: a model trained on face crops must see face crops
        images, missing = cached_images(paths, cfg.img_size, on_bad_image, CropSettings.from_config(cfg, device=device),
                                        cfg.image_cache)
        probs.append(predict_dataset([rt.prepare(m) for m in models], ImageArrayDataset(images), rt,
                                     batch_size or rt.eval_batch(cfg.batch_size), tta=cfg.tta if tta is None else tta))
        bad.update(missing)
        if first is None:
            first, first_images = cfg, images
    probs = np.mean(probs, axis=0)
    bad = sorted(bad)
    keep = np.setdiff1d(np.arange(len(paths)), bad)
    shared = first.person_consistent if persons is None else persons
    if shared:
        probs[keep] = person_consistent(probs[keep], first_images[keep], first.group_threshold)[0]
    age_bias = age_bias_for(first, shared)
    if age_bias is not None:
        probs[keep] = apply_age_bias(probs[keep], age_bias)
    return probs, bad, first



def run_age_bias(runs: list[Path], calibrate: bool | None):
    """For _predict: the run's fitted age bias when calibration is on (None: as the run's calibrate_age says).
    The bias is fitted for how one run is served (a run with members: their average); runs named together are
    served without it."""
    if len(runs) > 1:
        if calibrate:
            raise ValueError("calibration.json is fitted for one run's predictions; predict an ensemble of runs "
                             "with calibration off")
        return lambda cfg, shared: None

    def age_bias_for(cfg, shared):
        return load_age_bias(runs[0], shared) if (cfg.calibrate_age if calibrate is None else calibrate) else None
    return age_bias_for



def run_members(runs: list[Path], calibrate: bool | None):
    """(_predict's members: the checkpoints of each run and of its ensemble members, the age-bias picker), checked
    before anything is predicted."""
    age_bias_for = run_age_bias(runs, calibrate)
    return [find_checkpoints(r) for r in with_members(runs)], age_bias_for
