"""The predictor: models -> class probabilities over images, in the order given (optionally with mirror images),
and image files served by a run's serving policy."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Subset

from mcls.config import Config
from mcls.data.cache import cached_images
from mcls.data.dataset import ImageArrayDataset, make_loader
from mcls.data.faces import CropSettings
from mcls.errors import UserError
from mcls.infer.serving import Serving
from mcls.model.checkpoint import load_checkpoint
from mcls.model.classifier import class_log_probs
from mcls.runtime import distributed
from mcls.runtime.device import Runtime
from mcls.runtime.progress import progress


@torch.no_grad()
def predict_views(models, loader, rt: Runtime, flip: bool = False, desc: str = "predict") -> np.ndarray:
    """(V, N, 18) class probabilities averaged over models, in the loader's (never shuffled) order: V = 1 for the
    images, V = 2 with their mirror images (which ride in the same batch)."""
    models = models if isinstance(models, (list, tuple)) else [models]
    for m in models:
        m.eval()
    out, seen = [], []
    for x, _, idx in progress(loader, desc=desc):
        x = rt.to_input(x)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        p = 0
        with rt.autocast():
            for m in models:
                p = p + class_log_probs(m(x)).exp()
        p = (p / len(models)).float().cpu()
        out.append(torch.stack([p[: len(idx)], p[len(idx):]]) if flip else p[None])
        seen.append(idx)
    seen = torch.cat(seen).numpy()
    expected = np.asarray(getattr(loader.dataset, "indices", np.arange(len(loader.dataset))))
    if len(seen) != len(expected) or not np.array_equal(seen, expected):
        raise RuntimeError(f"prediction scored {len(seen)} of {len(expected)} rows or out of order: refusing to "
                           "continue")
    return torch.cat(out, dim=1).numpy()


def predict_probs(models, loader, rt: Runtime, tta: bool = False, desc: str = "predict") -> np.ndarray:
    """(N, 18) class probabilities averaged over models, and over each image and its mirror with flip TTA."""
    return predict_views(models, loader, rt, flip=tta, desc=desc).mean(0)


def predict_dataset(models, dataset, rt: Runtime, batch_size: int, tta: bool = False, num_workers: int = 0,
                    desc: str = "predict", views: bool = False) -> np.ndarray:
    """predict_probs over a whole dataset (with views=True: predict_views with the mirror images, (2, N, 18));
    under torchrun each rank scores its share and all get every row.

    `batch_size` counts images per forward pass: with mirror images the loader takes half as many, and their flips
    ride along, so TTA costs twice the work and not a slower batch size on top."""
    flip = tta or views
    rows = distributed.shard(len(dataset))
    part = dataset if len(rows) == len(dataset) else Subset(dataset, rows)
    per_load = max(1, batch_size // 2) if flip else batch_size
    loader = make_loader(part, per_load, train=False, num_workers=num_workers, pin_memory=rt.pin_memory)
    out = np.stack([distributed.gather_concat(v) for v in predict_views(models, loader, rt, flip=flip, desc=desc)])
    return out if views else out.mean(0)


def load_ensemble(checkpoints, device) -> tuple[list, Config]:
    """Models from checkpoints that must agree on input size; returns (models, config of the first)."""
    models, cfgs = zip(*(load_checkpoint(p, device) for p in checkpoints))
    sizes = {c.img_size for c in cfgs}
    if len(sizes) > 1:
        raise UserError(f"checkpoints disagree on img_size {sorted(sizes)}; ensemble models of one size")
    return list(models), cfgs[0]


def predict_paths(paths, serving: Serving, device: str = "auto", batch_size: int | None = None,
                  on_bad_image: str = "error") -> tuple[np.ndarray, list[int], Config]:
    """(N, 18) probabilities for image files as `serving` serves them, the indices of unreadable files (their rows
    are left unserved) and the first model's config. Each averaged run sees the images at its own size and crop,
    prepared exactly as its validation images were; nothing is shuffled."""
    rt = Runtime(device)
    members = [[serving.checkpoint]] if serving.checkpoint else [r.checkpoints() for r in serving.runs]
    probs, bad, first = [], set(), None
    for checkpoints in members:
        models, cfg = load_ensemble(checkpoints, rt.device)
        # the run's own crop settings: a model trained on face crops must see face crops
        images, missing = cached_images(paths, cfg.img_size, on_bad_image, CropSettings.from_config(cfg, device=device),
                                        cfg.image_cache, cfg.max_pixels)
        probs.append(predict_dataset([rt.prepare(m) for m in models], ImageArrayDataset(images), rt,
                                     batch_size or rt.eval_batch(cfg.batch_size), tta=serving.tta))
        bad.update(missing)
        if first is None:
            first, first_images = cfg, images
    probs = np.mean(probs, axis=0)
    bad = sorted(bad)
    keep = np.setdiff1d(np.arange(len(paths)), bad)
    probs[keep] = serving.with_face(probs[keep], [paths[i] for i in keep])
    probs[keep] = serving.finish(probs[keep], serving.groups(first_images[keep]))
    return probs, bad, first
