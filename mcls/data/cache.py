"""A disk cache of decoded (and face-cropped) images at model resolution, memory-mapped on reuse.

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
from pathlib import Path

import numpy as np

from mcls.data.images import load_images

log = logging.getLogger(__name__)
CACHE_VERSION = 1  # bump when decoding or resizing changes what the same inputs produce


def cache_key(paths, size: int, crop) -> str:
    files = []
    for p in paths:
        try:
            st = os.stat(p)
            files.append((str(p), st.st_size, st.st_mtime_ns))
        except OSError:
            files.append((str(p), -1, -1))  # missing now; decoding reports it
    crop_key = None
    if crop is not None:  # where crops are computed, or cached, does not change them
        crop_key = {k: v for k, v in dataclasses.asdict(crop).items() if k not in ("device", "batch_size", "cache_dir")}
    blob = json.dumps({"v": CACHE_VERSION, "size": size, "crop": crop_key, "files": files}).encode()
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


def cached_images(paths, size: int, on_bad_image: str = "error", crop=None, cache_dir: str | Path = ""):
    """load_images, through the cache in `cache_dir` ("" = no cache). Returns (array, bad indices); a cached
    array is a read-only memory map. Bad files are remembered, and raise again under on_bad_image=error."""
    paths = [str(p) for p in paths]
    if not cache_dir:
        return load_images(paths, size, on_bad_image, crop=crop)
    cache_dir = Path(cache_dir)
    key = cache_key(paths, size, crop)
    array_file, meta_file = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    cached = _read_entry(array_file, meta_file, len(paths), size)
    if cached is not None:
        images, bad = cached
        if bad and on_bad_image == "error":  # raises with each file's own problem
            load_images([paths[i] for i in bad], size, "error", crop=crop)
        log.info("images: %d from cache %s", len(paths), array_file)
        return images, bad
    images, bad = load_images(paths, size, on_bad_image, crop=crop)  # raises before caching under "error"
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = array_file.with_name(f".{array_file.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, images)
    os.replace(tmp, array_file)  # the array first: a meta file always has its array beside it
    tmp_meta = meta_file.with_name(f".{meta_file.name}.{os.getpid()}.tmp")
    tmp_meta.write_text(json.dumps({"bad": bad, "n": len(paths), "size": size}))
    os.replace(tmp_meta, meta_file)
    return images, bad
