"""Age-band calibration: fitted on out-of-fold predictions only, measured nested, applied where it was fitted."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE, TINY

from mcls.config import Config
from mcls.infer.calibration import apply_age_bias, fit_age_bias
from mcls.infer.serving import age_bias_of
from mcls.infer.submission import write_submission
from mcls.labels import encode
from mcls.metrics import macro_f1, score
from mcls.model.classifier import head_probs
from mcls.runs.layout import CALIBRATION as FILE
from mcls.runs.layout import Run


def shy_of_old_age(n, seed, shrink=np.exp(-1.2)):
    """Labels and a model that knows the age band fairly well but says >=60 3.3x too rarely."""
    rng = np.random.default_rng(seed)
    mask, gender = rng.integers(0, 3, n), rng.integers(0, 2, n)
    age = rng.choice(3, n, p=[0.45, 0.43, 0.12])
    labels = encode(mask, gender, age)
    logits = rng.normal(0, 1.0, (n, 18)) + 2.5 * np.eye(18)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs = probs.reshape(n, 3, 2, 3) * np.array([1, 1, shrink])
    return labels, (probs / probs.sum((1, 2, 3), keepdims=True)).reshape(n, 18)


def test_numpy_macro_f1_is_the_competition_metric():
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels, probs = rng.integers(0, 18, 300), rng.random((300, 18))
        probs[:, 5] = 0  # a class nobody predicts ...
        labels[labels == 7] = 8  # ... and one that is predicted but absent
        assert macro_f1(labels, probs.argmax(1)) == pytest.approx(score(labels, probs)["f1"])


def test_bias_moves_only_the_age_band():
    """On a multi-head model's joint (a product of the three heads) the mask and gender answers stay put."""
    rng = np.random.default_rng(1)
    heads = [rng.dirichlet(np.ones(k), 200) for k in (3, 2, 3)]
    probs = (heads[0][:, :, None, None] * heads[1][:, None, :, None] * heads[2][:, None, None, :]).reshape(200, 18)
    out = apply_age_bias(probs, [0.0, 0.0, 1.0])
    before, after = head_probs(torch_(probs)), head_probs(torch_(out))
    assert np.allclose(out.sum(1), 1, atol=1e-5)
    for head in ("mask", "gender"):
        assert np.allclose(before[head], after[head], atol=1e-5)
    assert (after["age"][:, 2] > before["age"][:, 2]).all()


def torch_(a):
    import torch

    return torch.as_tensor(np.asarray(a, dtype=np.float32))


def test_fit_recovers_a_known_prior_shift_and_scores_it_out_of_sample():
    folds = [shy_of_old_age(1500, s) for s in range(3)]
    fit = fit_age_bias(folds)
    assert 0.7 <= fit["age_log_bias"][2] <= 1.7  # the 1.2 taken away, within the grid's resolution
    assert fit["age_log_bias"][1] == 0.0
    for (labels, probs), nested in zip(folds, fit["nested"]):
        assert nested["before"]["f1"] == pytest.approx(score(labels, probs)["f1"])
        assert nested["after"]["f1_old"] > nested["before"]["f1_old"]
    assert np.mean([n["after"]["f1"] for n in fit["nested"]]) > np.mean([n["before"]["f1"] for n in fit["nested"]])


def test_one_fold_is_not_enough_to_calibrate():
    with pytest.raises(ValueError, match="2 or more folds"):
        fit_age_bias([shy_of_old_age(100, 0)])


@pytest.fixture(scope="module")
def two_fold_run(tmp_path_factory):
    from mcls.train.run import train

    run = tmp_path_factory.mktemp("cal") / "run"
    summary = train(Config(data_dir=str(SAMPLE), run_dir=str(run), **{**TINY, "n_folds": 2}, fold=-1,
                            calibrate_age=True))
    return run, summary


def test_training_every_fold_fits_the_calibration(two_fold_run):
    run, summary = two_fold_run
    record = json.loads((run / FILE).read_text())
    assert record["folds"] == [0, 1] and len(record["nested"]) == 2
    assert summary["cal_age_log_bias"] == record["age_log_bias"]
    assert summary["cal_f1"] == pytest.approx(record["f1_after"])
    assert summary["pc_f1"] == pytest.approx(record["f1_before"])  # fitted on what prediction serves
    val = pd.read_csv(run / "fold0" / "val_predictions.csv")
    assert "group" in val and val["group"].notna().all()
    assert np.array_equal(age_bias_of(Run.of_checkpoint(run / "fold1" / "best.pt")), age_bias_of(Run(run)))


def test_prediction_applies_the_runs_calibration(two_fold_run, tmp_path):
    run, _ = two_fold_run
    record = json.loads((run / FILE).read_text())
    record["age_log_bias"] = [0.0, 0.0, 30.0]  # overwhelming: every answer must become >=60
    (run / FILE).write_text(json.dumps(record))
    sub = pd.read_csv(write_submission(SAMPLE, run, out=tmp_path / "on.csv"))
    off = pd.read_csv(write_submission(SAMPLE, run, out=tmp_path / "off.csv", overrides={"calibrate_age": False}))
    assert (sub["ans"] % 3 == 2).all() and not (off["ans"] % 3 == 2).all()
    # fitted on person-shared predictions: applying it to unshared ones is allowed, and said to be approximate
    with pytest.warns(UserWarning, match="fitted with person_consistent=True and is applied with False"):
        write_submission(SAMPLE, run, out=tmp_path / "unshared.csv", overrides={"person_consistent": False})


def test_calibrate_command_refits_and_single_fold_runs_are_left_alone(two_fold_run, trained_run, mcls_cli):
    run, summary = two_fold_run
    (run / FILE).unlink()
    r = mcls_cli("calibrate", "--run", run)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / FILE).read_text())["age_log_bias"] == summary["cal_age_log_bias"]
    r = mcls_cli("calibrate", "--run", trained_run)
    assert r.returncode != 0 and "2 or more folds" in r.stderr and not (trained_run / FILE).exists()
