"""Ensembles in one run (config key `members`): members train on the run's folds, the run scores their average
out of fold, and prediction of the run folder averages every member."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

from mcls.config import ConfigError, load_config
from mcls.infer.persons import share_within_groups
from mcls.infer.predictor import predict_paths
from mcls.infer.serving import Serving
from mcls.infer.submission import predict_folder, write_submission
from mcls.metrics import score
from mcls.runs.layout import Run
from mcls.train.members import member_configs
from mcls.train.run import train

PROBS = [f"p{k}" for k in range(18)]


def _member(tmp_path, name, text):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def test_a_run_with_members_trains_them_on_its_folds_and_predicts_their_average(members_run, tiny_cfg, tmp_path,
                                                                               sample_dir):
    run, summary = members_run
    cfg = load_config(run / "config.yaml")
    assert Run.open(run).with_members == [Run(run), Run(run / "members" / "small")]
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
        (a, pa), (b, pb) = (Run(r).fold(k).oof(tta=True) for r in (run, run / "members" / "small"))
        assert a["path"].tolist() == b["path"].tolist()
        mean = (pa + pb) / 2
        f1.append(score(a["label"], share_within_groups(mean, a["group"].to_numpy()))["f1"])
    assert summary["ens_folds"] == list(range(cfg.n_folds))
    assert summary["ens_f1"] == pytest.approx(np.mean(f1), abs=1e-4)
    # the run's calibration is fitted on that average, which is what predicting the run serves
    record = json.loads((run / "calibration.json").read_text())
    assert record["runs"] == [str(run), str(run / "members" / "small")]
    assert record["f1_before"] == pytest.approx(summary["ens_f1"]) and summary["cal_f1"] == record["f1_after"]

    # prediction of the run folder averages the run's fold models and the member's
    folder = sample_dir / "eval" / "images"
    opts = dict(overrides={"person_consistent": False, "calibrate_age": False})
    both = pd.read_csv(predict_folder(folder, run, tmp_path / "both.csv", **opts))
    paths = both["path"].tolist()
    alone = predict_paths(paths, Serving.resolve(run, opts["overrides"], members=False))[0]
    member = predict_paths(paths, Serving.resolve(run / "members" / "small", opts["overrides"]))[0]
    assert np.allclose(both[PROBS].to_numpy(), (alone + member) / 2, atol=2e-5)
    # naming the member again adds nothing twice
    named = predict_folder(folder, [run, run / "members" / "small"], tmp_path / "named.csv", **opts)
    assert np.allclose(pd.read_csv(named)[PROBS].to_numpy(), both[PROBS].to_numpy(), atol=1e-6)
    # the run folder owns the ensemble's submission; runs named together have no fitted calibration
    assert write_submission(sample_dir, run) == run / "submission.csv"
    with pytest.raises(ValueError, match="calibration off"):
        write_submission(sample_dir, [run, tmp_path / "alone"], out=tmp_path / "s.csv",
                         overrides={"calibrate_age": True})


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
        Run.open(tmp_path / "run").members


# member preset -> the bench/quality.py variant it is (trained on the same folds with the same keys)
BENCHMARKED = {"member-plain": "plain", "member-vcutmix": "vcutmix", "member-agedist": "age-dist",
               "member-seed7": "default+seed7", "member-mobilenetv2": "mobilenetv2", "member-wear2": "wear2"}


@pytest.fixture
def quality():
    """bench/quality.py, the benchmark whose variants and selection the presets come from."""
    import importlib
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module("quality")


def test_member_presets_are_the_variants_the_benchmark_measured(quality, tmp_path):
    from mcls.config import PRESETS

    assert {p.stem for p in PRESETS.glob("member-*.yaml")} == set(BENCHMARKED)
    # the members were measured beside the one-backbone default the quality preset keeps
    cfg = load_config("quality", [f"run_dir={tmp_path / 'q'}"])
    for name, member in member_configs(cfg.updated({"members": list(BENCHMARKED)})):
        measured = quality.variant_config(BENCHMARKED[name], cfg.data_dir, tmp_path)
        assert quality.config_hash(member) == quality.config_hash(measured), name
    quality_cfg = load_config("quality")
    assert quality_cfg.members and set(quality_cfg.members) <= set(BENCHMARKED)
    assert all(m.seed == quality_cfg.seed for _, m in member_configs(quality_cfg))


def test_the_per_task_preset_is_the_variant_the_benchmark_measured(quality, tmp_path):
    cfg = load_config("per-task", [f"run_dir={tmp_path / 'p'}"])
    measured = quality.variant_config("default+separate-maskmix-reframe128", cfg.data_dir, tmp_path)
    assert quality.config_hash(cfg) == quality.config_hash(measured)


def test_the_external_preset_is_the_benchmarked_variant_on_its_own_set(quality, tmp_path):
    cfg = load_config("external", [f"run_dir={tmp_path / 'e'}", f"external_data={quality.EXTERNAL}"])
    measured = quality.variant_config("default+external", cfg.data_dir, tmp_path)
    # its runs were trained before the serving keys chose the epoch (each chose per image, as the preset serves):
    # the same training but for those keys
    assert quality.config_hash(cfg.updated(quality.SERVED_AS_TRAINED)) == quality.config_hash(measured)
    assert not cfg.tta and not cfg.person_consistent  # served as is: not told apart (the simpler option)
    # keys added since (the external ones at their defaults) leave the recorded runs' folders where they were
    recorded = {run.rsplit("-", 1)[1] for run in pd.read_csv(ROOT / "bench" / "results" / "quality_folds.csv")["run"]}
    for name in ("default+served", "multi-default", "default+separate-maskmix-reframe", "default+relabel",
                 "default+external"):
        assert quality.config_hash(quality.variant_config(name, "../shared/data/utkmask", tmp_path)) in recorded, name


def test_ensemble_selection_adds_a_helpful_model_and_stops_before_a_harmful_one(quality, tmp_path):
    from mcls.runs.layout import FLIP_COLUMNS

    rng = np.random.default_rng(0)

    def model(labels, wrong, confidence):
        answer = np.where(rng.random(len(labels)) < wrong, rng.integers(0, 18, len(labels)), labels)
        probs = np.full((len(labels), 18), (1 - confidence) / 17)
        probs[np.arange(len(labels)), answer] = confidence
        return probs

    labels = {k: rng.integers(0, 18, 400) for k in (0, 1)}
    pool = {}
    for name, wrong, conf in (("multi-default", 0.4, 0.6), ("good", 0.1, 0.9), ("noise", 1.0, 0.95)):
        run = Run(tmp_path / name)  # a run folder as training leaves it, scored through the package's serving
        run.path.mkdir()
        run.config_file.write_text("tta: true\n")
        for k, y in labels.items():
            probs = model(y, wrong, conf)
            run.fold(k).dir.mkdir()
            run.fold(k).best.write_bytes(b"")
            # every image its own person: sharing changes nothing
            table = pd.DataFrame({"person": np.arange(400).astype(str), "path": [f"{k}/{i}.jpg" for i in range(400)],
                                  "label": y, "group": np.arange(400), "pred": probs.argmax(1)})
            table[PROBS] = probs
            table[FLIP_COLUMNS] = probs
            table.to_csv(run.fold(k).predictions, index=False)
        pool[name] = run.path
    assert quality.select_members(pool, [0, 1]) == ["multi-default", "good"]
