"""Joint training with external face-age photos: the faces the leak guard kept join every fold's training images
with their gender and age and no mask state, so the mask loss (and the 18-class label) ignores them
(losses.known_rows), and each epoch draws `external_share` of them per competition row (sampling.epoch_rows)."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from mcls.config import Config
from mcls.data.cache import cached_images
from mcls.data.dataset import targets_of
from mcls.data.faces import CropSettings
from mcls.runs.layout import Run
from mcls.train.pretrain import with_targets

log = logging.getLogger(__name__)


def joint_faces(cfg: Config, run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(images, targets) of the external faces the run's leak guard kept (<run>/external/external_kept.csv, written
    by pretrain.prepare_external), framed by the run's own crop; their mask and label targets are -1."""
    rows = with_targets(pd.read_csv(run.external_dir / "external_kept.csv"), cfg, mask=-1)
    images, bad = cached_images(rows["path"], cfg.img_size, "skip", CropSettings.from_config(cfg), cfg.image_cache,
                                cfg.max_pixels)
    if bad:  # the guard left out what it could not read: these broke since, and are said
        log.warning("joint training skips %d external face%s that cannot be read now: %s", len(bad),
                    "s" * (len(bad) != 1), ", ".join(rows["path"].iloc[bad[:3]]) + (" ..." if len(bad) > 3 else ""))
        keep = np.setdiff1d(np.arange(len(rows)), bad)
        rows, images = rows.iloc[keep].reset_index(drop=True), np.asarray(images)[keep]
    return images, targets_of(rows)


def joined(*extras):
    """Several `extra` (images, targets) pairs as one, for fit; None when there are none."""
    extras = [e for e in extras if e is not None and len(e[0])]
    if not extras:
        return None
    if len(extras) == 1:
        return extras[0]
    return np.concatenate([e[0] for e in extras]), np.concatenate([e[1] for e in extras])
