"""MTCNN face crops: batched detection, a content-keyed disk cache, and a recorded centre-crop fallback.

Detection is the only expensive step, so the cache stores each image's detected faces, keyed by a hash of the file's
bytes and of the detector settings. The crop itself (margin, chin room, confidence cut, fallback) is recomputed from
the cached faces in microseconds: changing a crop parameter re-detects nothing, changing a detector setting or the
file re-detects only that.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mcls.data.images import MAX_PIXELS, BadImageError, crop_array, decode_image, load_resized
from mcls.io import file_digest, write_text

log = logging.getLogger(__name__)

# Part of every cache key: change any of these and all images are detected afresh.
# Photos are shrunk to `short_side` and faces under `min_face` of it are not searched for: the subject's face is
# large, and the smallest pyramid scales are most of MTCNN's cost (3x faster on 200 px faces, same detections).
# Stage thresholds a notch under facenet-pytorch's (0.6, 0.7, 0.7) let more masked faces through to the final
# confidence cut (min_confidence): on data/sample 92% instead of 90% of images, 10% slower.
DETECTOR = {"model": "facenet-pytorch-mtcnn", "short_side": 256, "min_face": 0.15, "thresholds": [0.5, 0.6, 0.6],
            "factor": 0.709, "version": 1}
REPORT_COLUMNS = ["path", "detected", "confidence", "n_faces", "x1", "y1", "x2", "y2", "reason"]


@dataclass(frozen=True)
class CropSettings:
    """How a face becomes a crop; `margin` and `chin` are fractions of the face box's width / height."""

    margin: float = 0.1  # added on every side
    chin: float = 0.2  # added below as well, so a mask pulled down to the chin stays in the crop
    min_confidence: float = 0.9  # weaker detections count as no face
    fallback: float = 0.8  # no face: centred square with this fraction of the shorter side
    cache_dir: str = ".cache/mcls/crops"  # "" = no disk cache
    device: str = "auto"
    batch_size: int = 16
    max_pixels: int = MAX_PIXELS  # a larger photo is refused from its header (images.decode_image)

    @classmethod
    def from_config(cls, cfg, device: str | None = None) -> "CropSettings | None":
        """The config's crop settings, or None when cfg.crop is "none"."""
        if cfg.crop == "none":
            return None
        return cls(margin=cfg.crop_margin, chin=cfg.crop_chin, min_confidence=cfg.crop_min_confidence,
                   fallback=cfg.crop_fallback, cache_dir=cfg.crop_cache, device=device or cfg.device,
                   max_pixels=cfg.max_pixels)


# ---------------------------------------------------------------------------------------------- detection
@lru_cache(maxsize=2)
def _mtcnn(device: str):
    from facenet_pytorch import MTCNN

    from mcls.runtime.device import select_device

    return MTCNN(thresholds=DETECTOR["thresholds"], factor=DETECTOR["factor"], keep_all=True,
                 device=select_device(device))


def _detect_batch(device: str, arrays: list[np.ndarray]) -> list[list[list[float]]]:
    """Faces [[x1, y1, x2, y2, prob], ...] per image of one equal-size batch, in the batch's pixel coordinates."""
    mtcnn = _mtcnn(device)
    mtcnn.min_face_size = max(20, round(DETECTOR["min_face"] * min(arrays[0].shape[:2])))
    boxes, probs = mtcnn.detect(np.stack(arrays))
    return [[] if b is None else [[*map(float, bb), float(p)] for bb, p in zip(b, pr)] for b, pr in zip(boxes, probs)]


def _detection_input(arr: np.ndarray) -> tuple[np.ndarray, float]:
    """The photo shrunk to the detector's short side (never enlarged); returns (array, scale)."""
    h, w = arr.shape[:2]
    scale = min(1.0, DETECTOR["short_side"] / min(h, w))
    if scale < 1.0:
        arr = np.asarray(Image.fromarray(arr).resize((round(w * scale), round(h * scale)), Image.BILINEAR))
    return arr, scale


def _cache_file(cache_dir: str, digest: str) -> Path:
    key = hashlib.sha1(json.dumps(DETECTOR, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cache_dir) / f"mtcnn-{key}" / digest[:2] / f"{digest}.json"


def detect_faces(paths, settings: CropSettings = CropSettings()) -> list[dict]:
    """One record per path: {"size": [h, w], "faces": [[x1, y1, x2, y2, prob], ...]} in the decoded image's pixels
    (EXIF orientation applied), or {"error": message} for a file that cannot be read. Never raises for one image.

    Cached records are read back without decoding; the rest are decoded and detected in equal-size batches, a batch
    at a time so memory stays flat however many images there are.
    """
    from mcls.runtime.progress import progress

    paths = [str(p) for p in paths]
    records: list[dict | None] = [None] * len(paths)
    pending: dict[tuple, list] = {}  # detection shape -> [(index, digest, array, scale, size)]

    def flush(shape):
        chunk = pending.pop(shape)
        for (i, digest, _, scale, size), faces in zip(chunk, _detect_chunk(settings.device, chunk)):
            if faces is None:  # the detector itself failed: fall back now, but do not cache a maybe-transient error
                records[i] = {"size": size, "faces": [], "failed": True}
                continue
            faces = [[round(v / scale, 2) for v in f[:4]] + [round(f[4], 5)] for f in faces]
            records[i] = {"size": size, "faces": faces}
            if settings.cache_dir:
                write_text(_cache_file(settings.cache_dir, digest), json.dumps(records[i]))

    for i, path in enumerate(progress(paths, desc="faces")):
        try:
            digest = file_digest(path)
        except OSError as err:
            records[i] = {"error": f"{path}: cannot read ({type(err).__name__}: {err})"}
            continue
        cached = _cache_file(settings.cache_dir, digest) if settings.cache_dir else None
        if cached is not None and cached.is_file():
            try:
                records[i] = json.loads(cached.read_text())
                continue
            except (OSError, ValueError):
                pass  # a damaged entry is recomputed and rewritten
        try:
            arr = decode_image(path, settings.max_pixels)
        except BadImageError as err:
            records[i] = {"error": str(err)}
            continue
        small, scale = _detection_input(arr)
        pending.setdefault(small.shape, []).append((i, digest, small, scale, list(arr.shape[:2])))
        if len(pending[small.shape]) >= settings.batch_size:
            flush(small.shape)
    for shape in list(pending):
        flush(shape)
    return records


def _detect_chunk(device: str, chunk: list) -> list[list | None]:
    """Faces per image of the chunk; None for an image the detector failed on."""
    try:
        return _detect_batch(device, [c[2] for c in chunk])
    # MTCNN fails on odd inputs with torch's RuntimeError (incl. out of memory) or, on empty proposals, ValueError and
    # IndexError: retry one by one, only the culprit falls back. Anything else is a bug and shows its traceback.
    except (RuntimeError, ValueError, IndexError) as err:
        if len(chunk) == 1:
            log.warning("face detection failed for an image (%s: %s); using the fallback crop",
                        type(err).__name__, err)
            return [None]
        return [faces for c in chunk for faces in _detect_chunk(device, [c])]


# ---------------------------------------------------------------------------------------------- crops
def crop_box(record: dict, settings: CropSettings = CropSettings()) -> tuple[tuple[int, int, int, int] | None, str]:
    """(x1, y1, x2, y2) integer crop inside the image and "" for a face, or the fallback box and the reason.

    The face box grows by `margin` on every side and `chin` more below, then to a square; a square larger than
    the image is clipped (tight face photos then keep the whole image), a smaller one is shifted inside it.
    Returns (None, reason) for an unreadable image.
    """
    if "error" in record:
        return None, f"unreadable: {record['error']}"
    h, w = record["size"]
    face = subject_face(record, settings.min_confidence)
    if face is None:
        best = max((f[4] for f in record["faces"]), default=None)
        side = settings.fallback * min(h, w)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        reason = "no face" if best is None else f"low confidence {best:.3f}"
        reason = "detector failed" if record.get("failed") else reason
        return _fit(box, w, h), reason
    x1, y1, x2, y2, _ = face
    fw, fh = x2 - x1, y2 - y1
    x1, x2 = x1 - settings.margin * fw, x2 + settings.margin * fw
    y1, y2 = y1 - settings.margin * fh, y2 + (settings.margin + settings.chin) * fh
    side = max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return _fit((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), w, h), ""


def subject_face(record: dict, min_confidence: float) -> list[float] | None:
    """The photo's subject: the largest face at or above `min_confidence` (not a bystander), or None."""
    faces = [f for f in record.get("faces", []) if f[4] >= min_confidence]
    return max(faces, key=lambda f: (f[2] - f[0]) * (f[3] - f[1])) if faces else None


def _fit(box, w: int, h: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box

    def axis(lo, hi, size):
        length = max(1, min(round(hi - lo), size))
        lo = round(min(max(lo, 0), size - length))
        return lo, lo + length

    (x1, x2), (y1, y2) = axis(x1, x2, w), axis(y1, y2, h)
    return x1, y1, x2, y2


def crop_paths(paths, settings: CropSettings = CropSettings()) -> pd.DataFrame:
    """Report with one row per path: path, detected, confidence, n_faces, the crop box x1..y2 and the reason a
    fallback was used ("" when a face was found). Unreadable files get an empty box and never stop the run."""
    rows = []
    for path, rec in zip(paths, detect_faces(paths, settings)):
        box, reason = crop_box(rec, settings)
        faces = rec.get("faces", [])
        conf = max((f[4] for f in faces), default=float("nan"))
        rows.append((str(path), not reason, conf, len(faces), *(box or (-1,) * 4), reason))
    report = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    readable = ~report["reason"].str.startswith("unreadable")
    found = int(report["detected"].sum())
    log.info("faces found in %d of %d readable images (%.1f%%); %d use the centre-crop fallback",
             found, readable.sum(), 100 * detection_rate(report), readable.sum() - found)
    return report


def detection_rate(report: pd.DataFrame) -> float:
    """Share of readable images in which a face passed the confidence cut."""
    readable = ~report["reason"].str.startswith("unreadable")
    return float(report.loc[readable, "detected"].mean()) if readable.any() else float("nan")


def cropped(path, settings: CropSettings = CropSettings(), size: int | None = None) -> np.ndarray:
    """One image's crop as RGB uint8 (resized to size x size when given), for notebooks and before/after views."""
    box, _ = crop_box(detect_faces([path], settings)[0], settings)
    return (crop_array(decode_image(path, settings.max_pixels), box) if size is None
            else load_resized(path, size, box, settings.max_pixels))


def settings_dict(settings: CropSettings) -> dict:
    """The crop settings plus the detector's, as plain values for a metrics file."""
    return {**asdict(settings), "detector": DETECTOR}
