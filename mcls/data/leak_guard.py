"""The leak guard: external faces that show a competition person are dropped before any training.

An external face-age set may hold another photo of a person in the competition's own train or eval images; trained
on, it would carry that person's labels into validation or the test set. Every external face is compared with
every competition face by two checks:

- the same person: dlib's 128-d face descriptors (mcls.data.embeddings, cached by file content) closer than
  `threshold` (Euclidean distance between the unit-length descriptors the kit keeps; the config's
  external_threshold). dlib's own same-person rule, 0.6 between raw descriptors (about 0.42 here), is for one pair:
  against thousands of photos it finds a look-alike for most faces, so the threshold comes from this data's
  distances (docs/external-data.md);
- the same photo: a 255-bit difference hash of the grayscale picture, in both orientations, within a few bits, which
  catches copies that were flipped, resized or re-encoded even where no face descriptor could be computed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mcls.data.faces import CropSettings
from mcls.data.images import MAX_PIXELS, BadImageError, load_resized

HASH_GRID = 16  # block means a side: 16 x 15 + 15 = 255 bits
# of 255: how far two hashes of one photo drift through mirroring, resizing and JPEG (at most 11 on data/sample's
# faces); the closest 0.1 % of utkface-extra's faces are 22 bits from their nearest competition photo
HASH_BITS = 16
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


# Why a face is left out, in the order the guard asks; a face is counted under the first reason that holds.
LEFT_OUT = {"young": "under {min_age}", "unreadable": "unreadable",
            "same_person": "the same person as a competition face", "same_photo": "a copy of a competition photo",
            "no_face": "with no face found"}


@dataclass
class LeakReport:
    """What the guard found: the external rows kept, the faces left out by reason (LEFT_OUT's keys), the matched
    pairs (external path, competition path, descriptor distance, hash bits apart, which check matched), each
    guarded face's distance to its nearest competition face (inf where dlib read no face), the threshold and the
    minimum age used."""

    kept: pd.DataFrame
    left_out: dict[str, int]
    pairs: pd.DataFrame
    nearest: np.ndarray
    threshold: float
    min_age: int = 0

    @property
    def n_external(self) -> int:
        return len(self.kept) + self.n_left_out

    @property
    def n_left_out(self) -> int:
        return sum(self.left_out.values())

    def line(self) -> str:
        reasons = ", ".join(f"{n:,} {LEFT_OUT[r].format(min_age=self.min_age)}" for r, n in self.left_out.items())
        return (f"kept {len(self.kept):,} of {self.n_external:,} external faces; left out {reasons} "
                f"(threshold {self.threshold:g})")


def photo_hash(path, max_pixels: int = MAX_PIXELS) -> np.ndarray | None:
    """(2, 32) uint8: 255-bit difference hashes of the photo's 16 x 16 grayscale block means, as is and mirrored;
    None if it cannot be read (or claims more than `max_pixels`, as the crops and descriptors refuse it)."""
    try:
        arr = load_resized(path, HASH_GRID * 8, max_pixels=max_pixels).astype(np.float32).mean(-1)
    except BadImageError:
        return None
    small = arr.reshape(HASH_GRID, 8, HASH_GRID, 8).mean((1, 3))
    out = []
    for img in (small, small[:, ::-1]):
        bits = (img[:, 1:] > img[:, :-1]).flatten()  # 16 x 15 bits of left-to-right gradient ...
        bits = np.concatenate([bits, img[1:, 0] > img[:-1, 0], [False]])  # ... 15 of the first column's, 1 pad
        out.append(np.packbits(bits))
    return np.stack(out)


def hash_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) bits apart between two stacks of packed hashes."""
    return _POPCOUNT[np.bitwise_xor(a[:, None, :], b[None, :, :])].sum(-1, dtype=np.int32)


def screen_external(cfg) -> LeakReport:
    """The one way external data enters the kit, for training and `mcls leak-check` alike: read cfg.external_data
    (every bad name or row reported before anything is computed), leave out faces under external_min_age, then
    guard the rest against every competition photo of cfg.data_dir."""
    from mcls.data.external import read_external

    external = read_external(cfg.external_data)
    # descriptors need the face box whatever the run's own crop is
    settings = CropSettings.from_config(cfg.updated({"crop": "mtcnn"}))
    return guard(external, competition_photos(cfg.data_dir), cfg.external_threshold, settings,
                 min_age=cfg.external_min_age)


def guard(external: pd.DataFrame, competition_paths, threshold: float, settings: CropSettings = CropSettings(),
          cache_dir: str | None = None, chunk: int = 512, min_age: int = 0) -> LeakReport:
    """Leaves out of `external` (a read_external table) every face under `min_age`, unreadable, matching a
    competition photo (`threshold`: the config's external_threshold) or without a detected face (its identity
    cannot be checked); returns what is kept, the counts by reason and the matched pairs. Descriptors computed
    before come from the cache."""
    from mcls.data.embeddings import describe_faces

    young = external["age"].to_numpy() < min_age
    external = external[~young].reset_index(drop=True)
    competition_paths = [str(p) for p in competition_paths]
    ext_paths = external["path"].astype(str).tolist()
    ext_desc, ext_detected = describe_faces(ext_paths, settings, cache_dir)
    comp_desc = describe_faces(competition_paths, settings, cache_dir)[0]
    ext_hash, ext_readable = _hashes(ext_paths, settings.max_pixels)
    comp_hash, comp_readable = _hashes(competition_paths, settings.max_pixels)
    # a zero row is a face dlib could not read: it must not match another zero row
    ext_ok, comp_ok = np.abs(ext_desc).sum(1) > 0, np.abs(comp_desc).sum(1) > 0
    nearest = np.full(len(ext_paths), -1)
    dist = np.full(len(ext_paths), np.inf, dtype=np.float32)
    far = 8 * comp_hash.shape[-1]  # bits apart of a photo that could not be read: never close
    bits = np.full(len(ext_paths), far)
    for start in range(0, len(ext_paths), chunk):
        rows = slice(start, start + chunk)
        d = np.sqrt(np.clip(2 - 2 * ext_desc[rows] @ comp_desc.T, 0, None))
        d[~ext_ok[rows]] = np.inf
        d[:, ~comp_ok] = np.inf
        h = np.minimum(hash_bits(ext_hash[rows, 0], comp_hash[:, 0]), hash_bits(ext_hash[rows, 1], comp_hash[:, 0]))
        h[~ext_readable[rows]] = far
        h[:, ~comp_readable] = far
        dist[rows], bits[rows] = d.min(1), h.min(1)
        # the pair shown is the nearest face, or the nearest photo where only the photo hash matched
        photo_only = (bits[rows] <= HASH_BITS) & (dist[rows] >= threshold)
        nearest[rows] = np.where(photo_only, h.argmin(1), d.argmin(1))
    by_face, by_photo = dist < threshold, bits <= HASH_BITS
    matched = by_face | by_photo
    pairs = pd.DataFrame({"external": np.asarray(ext_paths)[matched],
                          "competition": np.asarray(competition_paths)[nearest[matched]],
                          "distance": dist[matched].round(4), "hash_bits": bits[matched],
                          "match": np.where(by_face[matched], "face", "photo")})
    no_face = ext_readable & ~matched & ~ext_detected
    left_out = {"young": int(young.sum()), "unreadable": int((~ext_readable).sum()), "same_person": int(by_face.sum()),
                "same_photo": int((by_photo & ~by_face).sum()), "no_face": int(no_face.sum())}
    kept = external[ext_readable & ~matched & ~no_face].reset_index(drop=True)
    return LeakReport(kept, left_out, pairs.sort_values("distance").reset_index(drop=True), dist, threshold, min_age)


def _hashes(paths, max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2, 32) photo hashes and whether each photo could be read."""
    hashes = [photo_hash(p, max_pixels) for p in paths]
    readable = np.array([h is not None for h in hashes], dtype=bool)
    blank = np.zeros((2, 32), dtype=np.uint8)
    return np.stack([blank if h is None else h for h in hashes]).reshape(len(paths), 2, 32), readable


def competition_photos(data_dir) -> list[str]:
    """Every photo the competition data holds a face in: each training person's `normal` photo (the other six are
    the same photo with a mask) and every eval image."""
    from mcls.data.table import load_eval_table, load_train_table

    train = load_train_table(data_dir)
    return [*train.loc[train["stem"] == "normal", "path"].astype(str), *load_eval_table(data_dir)["path"].astype(str)]
