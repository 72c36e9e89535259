"""The dlib face prior: descriptors, the per-fold expert, its blend into the heads, and serving a run with it."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE

from mcls.data import embeddings
from mcls.data.faces import CropSettings
from mcls.infer import face_expert
from mcls.labels import NUM_CLASSES, decode, encode
from mcls.metrics import score

pytestmark = pytest.mark.skipif(not embeddings.available(), reason="dlib-bin / face-recognition-models not installed")


def factorised(n, rng):
    heads = [rng.dirichlet(np.ones(s), size=n) for s in (3, 2, 3)]
    m, g, a = decode(np.arange(NUM_CLASSES))
    return heads, heads[0][:, m] * heads[1][:, g] * heads[2][:, a]


def marginal(probs, head, size):
    index = decode(np.arange(NUM_CLASSES))[head]
    return np.stack([probs[:, index == j].sum(1) for j in range(size)], axis=1)


def test_blend_moves_gender_and_age_only():
    rng = np.random.default_rng(0)
    (pm, pg, pa), probs = factorised(50, rng)
    expert = {"gender": rng.dirichlet(np.ones(2), size=50), "age": rng.dirichlet(np.ones(3), size=50)}
    expert["age"][3] = np.nan  # an image without a descriptor keeps the network's answer
    assert np.allclose(face_expert.blend(probs, expert, 0.0), probs)
    half = face_expert.blend(probs, expert, 0.5)
    assert np.allclose(half.sum(1), 1)
    assert np.allclose(marginal(half, 0, 3), pm)
    assert np.allclose(marginal(half, 1, 2), 0.5 * pg + 0.5 * expert["gender"])
    ok = np.arange(50) != 3
    assert np.allclose(marginal(half, 2, 3)[ok], 0.5 * pa[ok] + 0.5 * expert["age"][ok])
    assert np.allclose(marginal(half, 2, 3)[3], pa[3])
    # still a product of the three heads: the class with the top probability is each head's top answer
    full = face_expert.blend(probs, expert, 1.0)
    top = decode(full.argmax(1))
    assert (top[1] == expert["gender"].argmax(1)).all() and (top[0] == pm.argmax(1)).all()


def test_expert_learns_and_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    n = 400
    gender, band = rng.integers(0, 2, n), rng.integers(0, 3, n)
    x = rng.normal(size=(n, embeddings.DIM)).astype(np.float32)
    x[:, 0] += 3 * gender
    x[:, 1] += 3 * band
    table = pd.DataFrame({"gender": gender, "age_band_train": band})
    expert = face_expert.fit_expert(x, table)
    probs = face_expert.expert_probs(expert, x)
    assert (probs["gender"].argmax(1) == gender).mean() > 0.9 and (probs["age"].argmax(1) == band).mean() > 0.8
    ref = LogisticRegression(C=face_expert.C, max_iter=2000).fit((x - expert["mean"]) / expert["scale"], gender)
    assert np.allclose(probs["gender"], ref.predict_proba((x - expert["mean"]) / expert["scale"]), atol=1e-6)
    x[5] = 0  # no descriptor: no opinion
    assert np.isnan(face_expert.expert_probs(expert, x)["age"][5]).all()


def test_descriptors_cached_unit_and_unreadable_is_zero(tmp_path, monkeypatch):
    paths = sorted(SAMPLE.glob("train/images/*/normal.*"))[:2]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    settings = CropSettings(cache_dir=str(tmp_path / "cache"))
    first = embeddings.face_descriptors([*paths, bad], settings)
    assert first.shape == (3, embeddings.DIM)
    assert np.allclose(np.linalg.norm(first[:2], axis=1), 1, atol=1e-4) and not first[2].any()
    assert np.linalg.norm(first[0] - first[1]) > 0.3  # two persons, two faces

    def no_compute(*a, **k):
        raise AssertionError("computed again instead of read from the cache")

    monkeypatch.setattr(embeddings, "embed_array", no_compute)
    assert np.array_equal(embeddings.face_descriptors(paths, settings), first[:2])


def test_run_with_face_weight_fits_experts_and_serves_them(tiny_cfg, capsys):
    from mcls.cli import main
    from mcls.config import ConfigError
    from mcls.infer.serving import Serving
    from mcls.runs.layout import Run
    from mcls.train.run import train

    train(tiny_cfg.updated({"face_weight": 0.5}))
    run = Run(tiny_cfg.run_dir)
    assert run.fold(0).face_expert.is_file()
    serving = Serving.resolve(run.path)
    assert serving.face_weight == 0.5 and "face expert weight 0.5" in serving.describe()
    plain = Serving.resolve(run.path, {"face_weight": 0.0}).oof()[0].probs
    blended = serving.oof()[0].probs
    assert not np.allclose(plain, blended)
    assert np.allclose(marginal(plain, 0, 3), marginal(blended, 0, 3), atol=1e-4)  # mask untouched
    # the fold's own summary scores it as served: with the expert
    served = Serving.resolve(run.path, {"person_consistent": False}).oof()[0]
    assert json.loads(run.fold(0).summary.read_text())["f1"] == pytest.approx(score(served.labels, served.probs)["f1"],
                                                                              abs=1e-3)

    run.fold(0).face_expert.unlink()
    with pytest.raises(ConfigError, match="face_expert.npz.*mcls face-prior --run"):
        Serving.resolve(run.path)
    assert main(["face-prior", "--run", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert run.fold(0).face_expert.is_file() and "face_weight" in out and "serve with it" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("0.0", "0.25", "0.5", "0.75", "1.0"))]) == 5


def test_face_weight_out_of_range_is_refused():
    from mcls.config import Config, ConfigError

    with pytest.raises(ConfigError, match="face_weight=1.5 must be in"):
        Config().updated({"face_weight": 1.5})


def test_encode_decode_round_trip_used_by_blend():
    c = np.arange(NUM_CLASSES)
    assert np.array_equal(encode(*decode(c)), c)


def test_the_fusion_screen_scores_every_arm_on_a_trained_run(trained_run, tmp_path):
    import sys

    import torch
    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "bench"))
    import face_fusion

    rng = np.random.default_rng(1)
    (mask, gender, age), probs = factorised(5, rng)
    assert np.allclose(face_fusion.class_probs(mask, gender, age), probs)  # the labels' class order
    shared = face_fusion.per_person(rng.random((4, 2)), np.array(["a", "b", "a", "b"]))
    assert np.allclose(shared[0], shared[2]) and np.allclose(shared[1], shared[3])

    face_fusion.main(["--data", str(SAMPLE), "--run", str(trained_run), "--C", "0.01,1", "--out", str(tmp_path)])
    rows = pd.read_csv(tmp_path / "face_fusion.csv")
    arms = {("net", 0.0), ("late (face_weight 0.5)", 0.0), ("refit", 0.01), ("refit", 1.0), ("fused", 0.01),
            ("fused", 1.0)}  # C 0: no refitted head
    for view in ("as is", "+persons"):
        got = rows[(rows["view"] == view) & (rows["fold"] == 0)]
        assert set(zip(got["arm"], got["C"].fillna(0.0))) == arms
        assert got[["f1", "acc_gender", "acc_age"]].apply(lambda c: c.between(0, 1)).all().all()
    assert torch.is_grad_enabled()  # the screen's no-grad stays inside it: later tests train in this process
    text = (tmp_path / "face_fusion.md").read_text()
    assert "bench/face_fusion.py --data" in text and "| fused" in text


def test_descriptor_cache_misses_on_a_new_confidence_cut_and_never_keeps_a_centred_box(tmp_path, monkeypatch):
    paths = sorted(SAMPLE.glob("train/images/*/normal.*"))[:2]
    settings = CropSettings(cache_dir=str(tmp_path / "cache"))
    embeddings.face_descriptors(paths, settings)
    calls = []
    real = embeddings.embed_array
    monkeypatch.setattr(embeddings, "embed_array", lambda arr, box: calls.append(box) or real(arr, box))
    embeddings.face_descriptors(paths, CropSettings(cache_dir=settings.cache_dir, min_confidence=0.95))
    assert len(calls) == 2  # another cut may pick another box: both computed again
    # a cut no face passes: every box is the centred stand-in, used but never written to the cache
    calls.clear()
    strict = CropSettings(cache_dir=settings.cache_dir, min_confidence=1.01)
    before = sorted(p for p in (tmp_path / "cache").rglob("*.npy"))
    embeddings.face_descriptors(paths, strict)
    embeddings.face_descriptors(paths, strict)
    assert len(calls) == 4 and sorted((tmp_path / "cache").rglob("*.npy")) == before
