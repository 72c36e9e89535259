"""Ensembles in one run (config key `members`): members train on the run's folds, the run scores their average
out of fold, and prediction of the run folder averages every member."""
import numpy as np
import pandas as pd
import pytest

from mcls.config import ConfigError, load_config
from mcls.ensemble import member_configs, run_with_members
from mcls.metrics import score
from mcls.persons import share_within_groups
from mcls.predict import find_checkpoints, predict_folder, predict_paths, write_submission
from mcls.train import train

PROBS = [f"p{k}" for k in range(18)]


def _member(tmp_path, name, text):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def test_a_run_with_members_trains_them_on_its_folds_and_predicts_their_average(tiny_cfg, tmp_path, sample_dir):
    other = _member(tmp_path, "small", "img_size: 40\ntrain_seed: 3\n")
    cfg = tiny_cfg.updated({"members": [other], "fold": -1})
    summary = train(cfg)
    run = tmp_path / "run"
    assert run_with_members(run) == [run, run / "members" / "small"]
    member_cfg = load_config(run / "members" / "small" / "config.yaml")
    assert (member_cfg.img_size, member_cfg.train_seed, member_cfg.members) == (40, 3, [])
    # a member is the same model as a run trained alone with its keys, so ensembles that bench/quality.py scores
    # from separately trained variants are what a run with members trains
    train(tiny_cfg.updated({"run_dir": str(tmp_path / "alone"), "img_size": 40, "train_seed": 3}))
    a, b = (pd.read_csv(r / "fold0" / "val_predictions.csv") for r in (run / "members" / "small", tmp_path / "alone"))
    assert np.allclose(a[PROBS].to_numpy(), b[PROBS].to_numpy(), atol=1e-5)

    # ens_f1: the two runs' validation probabilities averaged per fold, shared within the run's blind groups
    f1 = []
    for k in range(cfg.n_folds):
        a, b = (pd.read_csv(r / f"fold{k}" / "val_predictions.csv") for r in (run, run / "members" / "small"))
        assert a["path"].tolist() == b["path"].tolist()
        mean = (a[PROBS].to_numpy() + b[PROBS].to_numpy()) / 2
        f1.append(score(a["label"], share_within_groups(mean, a["group"].to_numpy()))["f1"])
    assert summary["ens_folds"] == list(range(cfg.n_folds))
    assert summary["ens_f1"] == pytest.approx(np.mean(f1), abs=1e-4)

    # prediction of the run folder averages the run's fold models and the member's
    folder = sample_dir / "eval" / "images"
    opts = dict(persons=False, calibrate=False)
    both = pd.read_csv(predict_folder(folder, run, tmp_path / "both.csv", **opts))
    paths = both["path"].tolist()
    alone = predict_paths(paths, find_checkpoints(run), persons=False)[0]
    member = predict_paths(paths, find_checkpoints(run / "members" / "small"), persons=False)[0]
    assert np.allclose(both[PROBS].to_numpy(), (alone + member) / 2, atol=2e-5)
    # naming the member again adds nothing twice
    named = predict_folder(folder, [run, run / "members" / "small"], tmp_path / "named.csv", **opts)
    assert np.allclose(pd.read_csv(named)[PROBS].to_numpy(), both[PROBS].to_numpy(), atol=1e-6)
    # the run folder owns the ensemble's submission; calibration (fitted per model) is refused for it
    assert write_submission(sample_dir, run) == run / "submission.csv"
    with pytest.raises(ValueError, match="calibration off"):
        write_submission(sample_dir, run, out=tmp_path / "s.csv", calibrate=True)


def test_members_may_not_change_the_folds_or_repeat_a_name(tiny_cfg, tmp_path):
    moved = _member(tmp_path, "moved", "seed: 7\nimg_size: 40\n")
    with pytest.raises(ConfigError, match="moved.yaml: a member cannot set seed"):
        member_configs(tiny_cfg.updated({"members": [moved]}))
    same = _member(tmp_path, "same", "img_size: 40\n")
    with pytest.raises(ConfigError, match="'same' is named twice"):
        member_configs(tiny_cfg.updated({"members": [same, same]}))
    typo = _member(tmp_path, "typo", "img_sise: 40\n")
    with pytest.raises(ConfigError, match="typo.yaml: unknown key 'img_sise'"):
        member_configs(tiny_cfg.updated({"members": [typo]}))
    with pytest.raises(ConfigError, match="config file not found"):
        member_configs(tiny_cfg.updated({"members": ["no-such-member"]}))


def test_a_run_whose_members_are_unfinished_says_so(tiny_cfg, tmp_path):
    train(tiny_cfg)
    saved = tmp_path / "run" / "config.yaml"
    # as if training stopped before the member started: the run names a member that has no folder yet
    saved.write_text(saved.read_text().replace("members: []", "members:\n- member-plain"))
    with pytest.raises(FileNotFoundError, match=r"member run\(s\) \['member-plain'\] not trained yet"):
        run_with_members(tmp_path / "run")


def test_the_quality_preset_is_the_default_plus_diverse_members(tmp_path):
    cfg = load_config("quality", [f"run_dir={tmp_path / 'q'}"])
    members = dict(member_configs(cfg))
    assert list(members) == ["member-plain", "member-vcutmix", "member-agedist"]
    assert cfg.img_size == 160 and not cfg.calibrate_age
    for name, member in members.items():
        assert member.img_size == 128 and member.ema_decay == 0.0 and member.wear_per_person == 5
        assert member.run_dir == str(tmp_path / "q" / "members" / name) and member.seed == cfg.seed
    assert members["member-vcutmix"].mix == "vcutmix" and members["member-agedist"].age_head == "dist"
