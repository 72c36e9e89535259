"""Prediction never shuffles, scores every image, and the submission writer refuses anything out of order."""
import numpy as np
import pandas as pd
import pytest

from mcls.config import Config
from mcls.data.dataset import ImageArrayDataset, make_loader
from mcls.infer.predictor import predict_probs
from mcls.infer.submission import SubmissionError, check_submission, predict_folder, write_submission
from mcls.model.checkpoint import load_checkpoint
from mcls.runtime.device import Runtime


def test_submission_rows_follow_info_csv(trained_run, sample_dir):
    out = write_submission(sample_dir, trained_run)
    sub, info = pd.read_csv(out), pd.read_csv(sample_dir / "eval" / "info.csv")
    assert list(sub.columns) == ["ImageID", "ans"] and list(sub["ImageID"]) == list(info["ImageID"])
    assert sub["ans"].between(0, 17).all()


def test_submission_matches_per_image_prediction(trained_run, sample_dir):
    """Each row's answer is that very image's prediction: a shuffled loader would break this."""
    sub = pd.read_csv(write_submission(sample_dir, trained_run, out=trained_run / "s.csv",
                                       overrides={"tta": False}))
    model, cfg = load_checkpoint(trained_run / "fold0" / "best.pt")
    from mcls.data.images import load_resized

    for image_id, ans in zip(sub["ImageID"][:5], sub["ans"][:5]):
        image = load_resized(sample_dir / "eval" / "images" / image_id, cfg.img_size)[None]
        probs = predict_probs(model, make_loader(ImageArrayDataset(image), 1, train=False), Runtime.from_config(cfg))
        assert probs.argmax() == ans


def test_checker_refuses_bad_submissions(sample_dir):
    info = pd.read_csv(sample_dir / "eval" / "info.csv")
    good = pd.DataFrame({"ImageID": info["ImageID"], "ans": 0})
    check_submission(good, info)
    with pytest.raises(SubmissionError, match="row order"):
        check_submission(good.iloc[::-1].reset_index(drop=True), info)
    with pytest.raises(SubmissionError, match="rows"):
        check_submission(good.iloc[:-1], info)
    with pytest.raises(SubmissionError, match="outside"):
        check_submission(good.assign(ans=18), info)


def test_prediction_scores_every_row_with_partial_last_batch():
    """A validation loop that drops the last partial batch is impossible: 37 rows in batches of 8."""
    from mcls.model.classifier import create_model

    images = np.random.default_rng(0).integers(0, 255, (37, 32, 32, 3), dtype=np.uint8)
    probs = predict_probs(create_model("test_efficientnet", pretrained="none"),
                          make_loader(ImageArrayDataset(images), 8, train=False), Runtime(), tta=True)
    assert probs.shape == (37, 18) and np.allclose(probs.sum(1), 1, atol=1e-4)


def test_predict_folder(trained_run, sample_dir, tmp_path):
    out = predict_folder(sample_dir / "eval" / "images", trained_run, tmp_path / "p.csv")
    df = pd.read_csv(out)
    assert len(df) == 21 and {"path", "class", "mask", "gender", "age_band", "p17"} <= set(df.columns)
    assert np.allclose(df[[f"p{k}" for k in range(18)]].sum(1), 1, atol=1e-3)


def test_a_different_submission_never_replaces_the_old_one_silently(trained_run, sample_dir, tmp_path):
    out = tmp_path / "submission.csv"
    info = pd.read_csv(sample_dir / "eval" / "info.csv")
    pd.DataFrame({"ImageID": info["ImageID"], "ans": 17}).to_csv(out, index=False)
    old = out.read_text()
    write_submission(sample_dir, trained_run, out=out)
    backups = list(tmp_path.glob("submission.*.csv"))
    assert len(backups) == 1 and backups[0].read_text() == old and out.read_text() != old
    write_submission(sample_dir, trained_run, out=out)  # same content again: nothing to keep
    assert len(list(tmp_path.glob("submission.*.csv"))) == 1


def test_person_consistent_prediction_answers_gender_and_age_once_per_blind_group(trained_run, sample_dir):
    from mcls.data.cache import load_images
    from mcls.data.table import load_train_table
    from mcls.infer.persons import face_embeddings, group_images
    from mcls.infer.predictor import predict_paths
    from mcls.infer.serving import Serving
    from mcls.labels import decode
    from mcls.runs.layout import Run

    table = load_train_table(sample_dir)
    paths = table[table["person"].isin(table["person"].unique()[:6])]["path"]  # 6 persons x 7 photos
    probs = predict_paths(paths, Serving.resolve(trained_run, {"person_consistent": True}))[0]
    _, gender, age = decode(probs.argmax(1))
    cfg = load_checkpoint(Run.open(trained_run).checkpoints()[0])[1]
    groups = group_images(face_embeddings(load_images(paths, cfg.img_size)[0]), cfg.group_threshold)
    per_group = pd.DataFrame({"g": groups, "gender": gender, "age": age}).groupby("g").nunique()
    assert (per_group == 1).all().all() and len(per_group) < len(paths) / 2


def test_an_ensemble_of_runs_averages_each_run_at_its_own_size(trained_run, sample_dir, tmp_path):
    from conftest import TINY

    from mcls.train.run import train

    other = tmp_path / "other"  # another size and seed on the same folds
    train(Config(data_dir=str(sample_dir), run_dir=str(other), **{**TINY, "img_size": 64, "train_seed": 3}))
    folder = sample_dir / "eval" / "images"
    opts = dict(overrides={"person_consistent": False, "calibrate_age": False})
    probs = {}
    for name, run in (("a", trained_run), ("b", other), ("ab", [trained_run, other])):
        out = predict_folder(folder, run, tmp_path / f"{name}.csv", **opts)
        probs[name] = pd.read_csv(out)[[f"p{k}" for k in range(18)]].to_numpy()
    assert np.allclose(probs["ab"], (probs["a"] + probs["b"]) / 2, atol=2e-5)
    assert not np.allclose(probs["a"], probs["b"], atol=1e-3)

    with pytest.raises(ValueError, match="--out"):
        write_submission(sample_dir, [trained_run, other])
    with pytest.raises(ValueError, match="calibration off"):
        write_submission(sample_dir, [trained_run, other], out=tmp_path / "s.csv", overrides={"calibrate_age": True})
    sub = pd.read_csv(write_submission(sample_dir, [trained_run, other], out=tmp_path / "s.csv"))
    assert list(sub["ImageID"]) == list(pd.read_csv(sample_dir / "eval" / "info.csv")["ImageID"])
