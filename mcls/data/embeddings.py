"""A frozen face prior: dlib's 128-d face embedding per image, aligned on dlib's 5-point landmarks, cached on disk.

The embedding network (dlib_face_recognition_resnet_model_v1) was trained by Davis King on ~3 M faces of ~7,500
people, none from UTKFace, and released into the public domain, as was the 5-point landmark model. Both come in the
`face-recognition-models` package, which also ships a 68-point model whose training data forbids commercial use:
it is never loaded here.

The face box is the one the crops use (MTCNN, mcls.data.faces, cached), so the only new cost is landmarks plus one
ResNet pass per image; a cache entry per image is keyed by the file's bytes and the model names, like detections.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from mcls.data.faces import DETECTOR, CropSettings, detect_faces, subject_face
from mcls.data.images import BadImageError, decode_image
from mcls.io import file_digest, save_npy

log = logging.getLogger(__name__)

DIM = 128
# Part of every cache key: a change here recomputes every embedding.
EMBEDDER = {"landmarks": "shape_predictor_5_face_landmarks.dat", "net": "dlib_face_recognition_resnet_model_v1.dat",
            "chip": 150, "padding": 0.25, "jitter": 0, "version": 1}
INSTALL = "pip install dlib-bin face-recognition-models (both in the kit's dependencies)"


def models_dir() -> Path:
    """Where face-recognition-models keeps dlib's model files, found without importing the package (its __init__
    needs pkg_resources, which new setuptools no longer ship)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the face prior needs dlib's model files: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@lru_cache(maxsize=1)
def _dlib_models():
    try:
        import dlib
    except ImportError as err:
        raise ImportError(f"the face prior needs dlib: {INSTALL}") from err
    folder = models_dir()
    return dlib, dlib.shape_predictor(str(folder / EMBEDDER["landmarks"])), \
        dlib.face_recognition_model_v1(str(folder / EMBEDDER["net"]))


def available() -> bool:
    """Whether dlib and its model files are installed."""
    try:
        _dlib_models()
        return True
    except (ImportError, RuntimeError):
        return False


def face_box(record: dict, min_confidence: float) -> tuple[tuple[float, float, float, float], bool]:
    """(the subject's face box (the largest confident face), else the middle 60% of the photo; whether it was
    detected). Portraits are centred, and dlib's landmarks still land on a face that MTCNN missed behind a mask."""
    face = None if record.get("failed") else subject_face(record, min_confidence)
    if face is not None:
        return tuple(face[:4]), True
    h, w = record["size"]
    side = 0.6 * min(h, w)
    return ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2), False


def embed_array(arr: np.ndarray, box) -> np.ndarray:
    """One RGB uint8 image's embedding (float32, unit length) for a face box (x1, y1, x2, y2)."""
    dlib, landmarks, net = _dlib_models()
    x1, y1, x2, y2 = (round(v) for v in box)
    shape = landmarks(arr, dlib.rectangle(x1, y1, x2, y2))
    chip = dlib.get_face_chip(arr, shape, size=EMBEDDER["chip"], padding=EMBEDDER["padding"])
    vec = np.asarray(net.compute_face_descriptor(chip, EMBEDDER["jitter"]), dtype=np.float32)
    return vec / max(float(np.linalg.norm(vec)), 1e-8)


def _cache_folder(cache_dir: str, min_confidence: float) -> Path:
    """Where descriptors live, keyed by everything that picks a face box and embeds it: the embedder, the detector
    and the confidence cut (a box found under another cut is another descriptor); a file's bytes name it inside."""
    inputs = {"embedder": EMBEDDER, "detector": DETECTOR, "min_confidence": min_confidence}
    key = hashlib.sha1(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cache_dir) / f"dlib-{key}"


def _cache_file(folder: Path, digest: str) -> Path:
    return folder / digest[:2] / f"{digest}.npy"


def face_descriptors(paths, settings: CropSettings = CropSettings(), cache_dir: str | None = None) -> np.ndarray:
    """(n, 128) float32 embeddings of the images, a row of zeros for an unreadable one (never raises for one image).

    Cached rows (in `cache_dir`, by default the detections' cache folder; "" = none) are read back without decoding;
    the rest use the (cached) MTCNN faces for their box.
    """
    return describe_faces(paths, settings, cache_dir)[0]


def describe_faces(paths, settings: CropSettings = CropSettings(),
                   cache_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(face_descriptors, whether each image's face was detected): False for an unreadable image and for one
    described on the centred stand-in box."""
    from mcls.runtime.progress import progress

    cache_dir = settings.cache_dir if cache_dir is None else cache_dir
    folder = _cache_folder(cache_dir, settings.min_confidence) if cache_dir else None
    paths = [str(p) for p in paths]
    out = np.zeros((len(paths), DIM), dtype=np.float32)
    detected = np.zeros(len(paths), dtype=bool)
    todo = []
    for i, path in enumerate(paths):
        try:
            digest = file_digest(path)
        except OSError:
            continue
        cached = _cache_file(folder, digest) if folder else None
        if cached is not None and cached.is_file():
            try:
                out[i] = np.load(cached)
                detected[i] = True  # only a detected face's descriptor is ever cached
                continue
            except (OSError, ValueError):
                pass  # a damaged entry is recomputed and rewritten
        todo.append((i, digest))
    if not todo:
        return out, detected
    records = detect_faces([paths[i] for i, _ in todo], settings)
    n_centred = 0
    for (i, digest), record in zip(progress(todo, desc="face embeddings"), records):
        if "error" in record:
            continue
        box, found = face_box(record, settings.min_confidence)
        try:
            out[i] = embed_array(decode_image(paths[i], settings.max_pixels), box)
        except BadImageError:
            continue
        # a centred box stands in for a face the detector missed: used now, never kept as if it had been found
        n_centred += not found
        detected[i] = found
        if folder and found:
            save_npy(_cache_file(folder, digest), out[i])
    log.info("face descriptors: %d computed (%d on a centred box: no face detected, not cached), %d from the cache",
             len(todo), n_centred, len(paths) - len(todo))
    return out, detected
