"""Images at model resolution, decoded once: the face crop and the decoding composed (load_images), and a disk
cache of the result, memory-mapped on reuse.

The key covers every input of the pixels: each file's path, size and modification time, the resolution and the
crop settings. Change any of them and a new array is built; the old one is left alone. Folds, runs, notebooks
and torchrun processes on the same images share one decode.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mcls.data.faces import crop_paths
from mcls.data.images import MAX_PIXELS, BadImageError, load_resized

log = logging.getLogger(__name__)
CACHE_VERSION = 1  # bump when decoding or resizing changes what the same inputs produce


def cache_key(paths, size: int, crop, max_pixels: int = MAX_PIXELS) -> str:
    files = []
    for p in paths:
        try:
            st = os.stat(p)
            files.append((str(p), st.st_size, st.st_mtime_ns))
        except OSError:
            files.append((str(p), -1, -1))  # missing now; decoding reports it
    crop_key = None
    if crop is not None:  # where crops are computed, or cached, does not change them
        crop_key = {k: v for k, v in dataclasses.asdict(crop).items()
                    if k not in ("device", "batch_size", "cache_dir", "max_pixels")}
    inputs = {"v": CACHE_VERSION, "size": size, "crop": crop_key, "files": files}
    if max_pixels != MAX_PIXELS:  # another limit may refuse other files; the usual one keeps the keys already made
        inputs["max_pixels"] = max_pixels
    blob = json.dumps(inputs).encode()
    return hashlib.sha1(blob).hexdigest()[:20]


def _read_entry(array_file: Path, meta_file: Path, n: int, size: int):
    """(images, bad) from a cache entry, or None when it is missing or damaged (a truncated or foreign .npy, an
    unreadable .json): a cache is rebuilt, never trusted blindly and never fatal."""
    if not (array_file.exists() and meta_file.exists()):
        return None
    try:
        bad = json.loads(meta_file.read_text())["bad"]
        images = np.load(array_file, mmap_mode="r")
        if images.shape != (n, size, size, 3) or images.dtype != np.uint8:
            raise ValueError(f"shape {images.shape}, dtype {images.dtype}")
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("image cache %s is damaged (%s); decoding again", array_file, err)
        return None
    return images, list(bad)


def cached_images(paths, size: int, on_bad_image: str = "error", crop=None, cache_dir: str | Path = "",
                  max_pixels: int = MAX_PIXELS):
    """load_images, through the cache in `cache_dir` ("" = no cache). Returns (array, bad indices); a cached
    array is a read-only memory map. Bad files are remembered, and raise again under on_bad_image=error."""
    paths = [str(p) for p in paths]
    if not cache_dir:
        return load_images(paths, size, on_bad_image, crop=crop, max_pixels=max_pixels)
    cache_dir = Path(cache_dir)
    key = cache_key(paths, size, crop, max_pixels)
    array_file, meta_file = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    cached = _read_entry(array_file, meta_file, len(paths), size)
    if cached is not None:
        images, bad = cached
        if bad and on_bad_image == "error":  # raises with each file's own problem
            load_images([paths[i] for i in bad], size, "error", crop=crop, max_pixels=max_pixels)
        log.info("images: %d from cache %s", len(paths), array_file)
        return images, bad
    images, bad = load_images(paths, size, on_bad_image, crop=crop, max_pixels=max_pixels)  # raises before caching
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = array_file.with_name(f".{array_file.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, images)
    os.replace(tmp, array_file)  # the array first: a meta file always has its array beside it
    tmp_meta = meta_file.with_name(f".{meta_file.name}.{os.getpid()}.tmp")
    tmp_meta.write_text(json.dumps({"bad": bad, "n": len(paths), "size": size}))
    os.replace(tmp_meta, meta_file)
    return images, bad


def load_images(paths, size: int, on_bad_image: str = "error", threads: int = 4, crop=None,
                max_pixels: int = MAX_PIXELS):
    """Decodes every path once into one (N, size, size, 3) uint8 array, face-cropped first when `crop` (a
    faces.CropSettings, e.g. CropSettings.from_config(cfg)) is given.

    Returns (array, bad) where `bad` lists the indices that could not be read. With on_bad_image="error" any bad
    file raises one BadImageError naming all of them; with "skip" their rows are left black and logged, and the
    caller drops them.
    """
    paths = [str(p) for p in paths]
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    errors: dict[int, str] = {}
    boxes = [None] * len(paths)
    if crop is not None:
        report = crop_paths(paths, crop)  # unreadable files get no box here and are reported by decoding below
        boxes = [None if r.x1 < 0 else (r.x1, r.y1, r.x2, r.y2) for r in report.itertuples()]

    def work(i):
        try:
            out[i] = load_resized(paths[i], size, boxes[i], max_pixels)
        except BadImageError as err:
            errors[i] = str(err)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(work, range(len(paths))))
    if errors:
        listing = "\n  ".join(errors[i] for i in sorted(errors))
        if on_bad_image == "error":
            raise BadImageError(f"{len(errors)} unreadable image(s) (set on_bad_image=skip to skip them):\n  {listing}")
        log.warning("skipping %d unreadable image(s):\n  %s", len(errors), listing)
    return out, sorted(errors)
