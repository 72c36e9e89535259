"""Person-consistent inference without ids: group the images that show one person, then share the person-level
answers (gender, age band) across the group while each image keeps its own mask state.

The grouping embedding is what the packaged ImageNet network sees in the top of the image (forehead, eyes):
masks cover everything below, so a person's seven photos agree there while different people differ. On
person-held-out utkmask folds at 128 px, threshold 0.4 recovers the persons with adjusted Rand index 0.92
(raw upper-face pixels reached only 0.40: the photos are shifted and scaled against each other).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score

from mcls.metrics import score
from mcls.model.classifier import create_model, head_probs
from mcls.runtime.device import Runtime

UPPER_SHARE = 0.31  # of the image height; at 0.44 mask tops leak in and grouping quality halves
EMBEDDING_BACKBONE = "tf_efficientnet_lite0"


@lru_cache(maxsize=1)
def _embedding_net() -> tuple[Runtime, torch.nn.Module]:
    rt = Runtime("cpu")  # the groups are found on the CPU wherever the model runs (its memory format, no AMP)
    return rt, rt.prepare(create_model(EMBEDDING_BACKBONE, pretrained="offline", drop_rate=0.0)).eval()


@torch.no_grad()
def face_embeddings(images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, D) unit vectors, centred on the set's mean so shared lighting cancels."""
    rt, net = _embedding_net()
    rows = max(8, int(round(images.shape[1] * UPPER_SHARE)))
    top = torch.from_numpy(np.ascontiguousarray(images[:, :rows])).permute(0, 3, 1, 2)
    face = net.face_backbone()
    feats = torch.cat([face(net.normalise(rt.to_input(top[i:i + batch_size])))
                       for i in range(0, len(top), batch_size)])
    feats = feats.numpy() - feats.numpy().mean(0)
    return feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-6)


def group_images(embeddings: np.ndarray, threshold: float) -> np.ndarray:
    """Group id per image: average-linkage clusters whose members lie within `threshold` cosine distance."""
    if len(embeddings) < 2:
        return np.zeros(len(embeddings), dtype=int)
    clusterer = AgglomerativeClustering(n_clusters=None, distance_threshold=threshold, metric="precomputed",
                                        linkage="average")
    return clusterer.fit_predict(cosine_distances(embeddings))


def cosine_distances(embeddings: np.ndarray) -> np.ndarray:
    """(N, N) cosine distances that also hold for zero vectors, which centring gives to duplicate photos and to a
    folder of identical (e.g. all-black) images: two zero vectors are the same picture (distance 0), a zero vector
    and any other are unrelated (distance 1)."""
    e = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(e, axis=1)
    zero = norms < 1e-4
    unit = np.divide(e, norms[:, None], out=np.zeros_like(e), where=~zero[:, None])
    dist = np.clip(1 - unit @ unit.T, 0, 2)
    dist[np.ix_(zero, zero)] = 0
    np.fill_diagonal(dist, 0)
    return dist


def share_within_groups(probs: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(N, 18) probabilities with gender and age replaced by their group means; mask stays per image."""
    marg = {k: v.numpy() for k, v in head_probs(_tensor(probs)).items()}
    gender, age = np.zeros_like(marg["gender"]), np.zeros_like(marg["age"])
    for g in np.unique(groups):
        members = groups == g
        gender[members] = marg["gender"][members].mean(0)
        age[members] = marg["age"][members].mean(0)
    joint = marg["mask"][:, :, None, None] * gender[:, None, :, None] * age[:, None, None, :]
    return joint.reshape(len(probs), -1)


def consistency_scores(labels, shared, groups, persons) -> dict[str, float]:
    """Scores of person-consistent predictions (prefixed pc_), and how well the blind groups match the persons."""
    out = {f"pc_{k}": v for k, v in score(labels, shared).items()}
    out["group_ari"] = float(adjusted_rand_score(persons, groups))
    out["n_groups"] = int(len(np.unique(groups)))
    return out


def _tensor(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float32))
