"""The leak guard (mcls.data.leak_guard): a competition face planted among external faces is dropped however it was
copied, and a stranger's face is kept."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE
from PIL import Image

from mcls.data import embeddings
from mcls.data.external import read_external
from mcls.data.faces import CropSettings
from mcls.data.leak_guard import HASH_BITS, competition_photos, guard, hash_bits, photo_hash

pytestmark = pytest.mark.skipif(not embeddings.available(), reason="dlib and its model files are not installed")


def _plant(tmp_path):
    """An external folder: one sample person's photo four ways (as is, mirrored, resized, re-encoded) and a stranger
    (the astronaut portrait scikit-image ships, cut to her face)."""
    from skimage.data import astronaut

    normal = next(SAMPLE.glob("train/images/*/normal.*"))
    face = Image.open(normal).convert("RGB")
    ext = tmp_path / "external"
    ext.mkdir()
    face.save(ext / "52_0_3_20170101000001.jpg", quality=95)
    face.transpose(Image.FLIP_LEFT_RIGHT).save(ext / "52_0_3_20170101000002.jpg", quality=95)
    face.resize((123, 123), Image.BILINEAR).save(ext / "52_0_3_20170101000003.jpg", quality=95)
    face.save(ext / "52_0_3_20170101000004.jpg", quality=40)
    Image.fromarray(astronaut()[20:260, 140:340]).resize((200, 200)).save(ext / "45_1_0_20170101000005.jpg")
    return ext, normal


def test_a_planted_competition_face_is_dropped_however_copied_and_a_stranger_is_kept(tmp_path, face_cache):
    ext, normal = _plant(tmp_path)
    external = read_external(ext)
    report = guard(external, competition_photos(SAMPLE), 0.4, CropSettings(cache_dir=face_cache))
    assert report.n_external == 5 and report.n_left_out == 4
    assert report.left_out["same_person"] + report.left_out["same_photo"] == 4
    assert [p.split("/")[-1] for p in report.kept["path"]] == ["45_1_0_20170101000005.jpg"]
    assert set(report.pairs["competition"]) == {str(normal)}
    # copies sit far inside the threshold, the stranger's nearest competition face outside it
    assert report.nearest[1:].max() < report.threshold / 3 and report.nearest[0] > report.threshold + 0.02
    # the descriptors are cached: a second pass computes none
    cached = sorted(Path(face_cache).rglob("*.npy"))
    assert len(cached) >= 5
    mtimes = [p.stat().st_mtime_ns for p in cached]
    guard(external, competition_photos(SAMPLE), 0.4, CropSettings(cache_dir=face_cache))
    assert [p.stat().st_mtime_ns for p in cached] == mtimes


def test_the_photo_hash_is_the_same_photo_through_flip_resize_and_jpeg(tmp_path):
    ext, normal = _plant(tmp_path)
    h0 = photo_hash(normal)
    copies = np.stack([photo_hash(ext / f"52_0_3_2017010100000{i}.jpg")[0] for i in (2, 3, 4)])
    assert (hash_bits(copies, h0).min(1) <= HASH_BITS).all()
    stranger = photo_hash(ext / "45_1_0_20170101000005.jpg")[:1]
    assert hash_bits(stranger, h0).min() > 2 * HASH_BITS
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    assert photo_hash(bad) is None


def test_the_leak_check_command_prints_the_count_and_leaves_pairs_and_figures(tmp_path, capsys, face_cache):
    from mcls.cli import main

    ext, normal = _plant(tmp_path)
    out = tmp_path / "check"
    assert main(["leak-check", f"external_data={ext}", f"data_dir={SAMPLE}", f"crop_cache={face_cache}",
                 "--out", str(out)]) in (0, None)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("kept 1 of 5 external faces; left out 0 under 18, 0 unreadable, ")
    assert lines[-1] == f"pairs, kept faces and figures: {out}"
    assert len(pd.read_csv(out / "leak_pairs.csv")) == 4 and len(pd.read_csv(out / "external_kept.csv")) == 1
    for png in ("leak_pairs.png", "nearest_distance.png"):
        assert Image.open(out / png).size[0] > 300

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "holiday.jpg").write_bytes((ext / "45_1_0_20170101000005.jpg").read_bytes())
    assert main(["leak-check", f"external_data={bad}", f"data_dir={SAMPLE}"]) not in (0, None)
    err = capsys.readouterr().err
    assert "holiday.jpg" in err and "not a UTKFace name" in err and len(err.strip().splitlines()) <= 3
    # a key the guard does not read is refused with those it does
    assert main(["leak-check", f"external_data={ext}", "epochs=3"]) not in (0, None)
    assert "epochs: mean(s) nothing to `mcls leak-check`; it takes data_dir, external_data" in capsys.readouterr().err


def test_every_face_left_out_is_counted_by_reason_and_training_prints_what_leak_check_prints(tmp_path, capsys,
                                                                                            face_cache):
    from conftest import TINY

    from mcls.cli import main
    from mcls.config import Config
    from mcls.data.leak_guard import screen_external
    from mcls.runs.layout import Run
    from mcls.train.pretrain import prepare_external

    ext, _ = _plant(tmp_path)
    stranger = ext / "45_1_0_20170101000005.jpg"
    (ext / "12_1_0_20170101000006.jpg").write_bytes(stranger.read_bytes())  # a child: under external_min_age
    (ext / "40_0_0_20170101000007.jpg").write_bytes(b"not a jpeg")
    rng = np.random.default_rng(0)  # no face in it: its identity cannot be checked
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(ext / "33_0_0_20170101000008.jpg")
    caches = {"crop_cache": face_cache, "image_cache": str(tmp_path / "images")}
    cfg = Config(data_dir=str(SAMPLE), run_dir=str(tmp_path / "run"), **TINY).updated(
        {"external_data": str(ext), "external_training": "joint", **caches})
    fresh = screen_external(cfg)
    assert fresh.left_out == {"young": 1, "unreadable": 1, "same_person": fresh.left_out["same_person"],
                              "same_photo": 4 - fresh.left_out["same_person"], "no_face": 1}
    assert [p.split("/")[-1] for p in fresh.kept["path"]] == [stranger.name]
    assert fresh.line() == (f"kept 1 of 8 external faces; left out 1 under 18, 1 unreadable, "
                            f"{fresh.left_out['same_person']} the same person as a competition face, "
                            f"{fresh.left_out['same_photo']} a copy of a competition photo, 1 with no face found "
                            f"(threshold {cfg.external_threshold:g})")
    assert screen_external(cfg).line() == fresh.line()  # a warm cache tells the same story

    assert main(["leak-check", f"external_data={ext}", f"data_dir={SAMPLE}", f"crop_cache={caches['crop_cache']}",
                 "--out", str(tmp_path / "check")]) in (0, None)
    assert capsys.readouterr().out.strip().splitlines()[-2] == fresh.line()
    prepare_external(cfg, Run(cfg.run_dir))
    record = json.loads(Run(cfg.run_dir).external_record.read_text())
    assert record["leak_guard"] == fresh.line() and record["left_out"] == fresh.left_out and record["n_kept"] == 1
