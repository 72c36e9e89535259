"""How a run is served: resolved once from the run's config plus the overrides given, the same from every door."""

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE, TINY

from mcls.config import Config, ConfigError
from mcls.infer.serving import SERVING_KEYS, Serving
from mcls.labels import PROB_COLUMNS
from mcls.runs.layout import FLIP_COLUMNS, Run



@pytest.fixture(scope="module")
def no_tta_run(tmp_path_factory):
    """A tiny run trained (and so scored) without flip TTA."""
    from mcls.train.run import train

    run = tmp_path_factory.mktemp("serving") / "run"
    train(Config(data_dir=str(SAMPLE), run_dir=str(run), **{**TINY, "tta": False}))
    return run


def test_an_override_given_beats_the_run_and_one_not_given_never_does(no_tta_run):
    assert Serving.resolve(no_tta_run).tta is False
    assert Serving.resolve(no_tta_run, {"tta": None, "person_consistent": None}).tta is False
    served = Serving.resolve(no_tta_run, {"tta": True, "person_consistent": False, "group_threshold": 0.3})
    assert (served.tta, served.person_consistent, served.group_threshold) == (True, False, 0.3)
    with pytest.raises(ConfigError, match="epochs: not a serving key; prediction takes tta, person_consistent"):
        Serving.resolve(no_tta_run, {"epochs": 3})
    with pytest.raises(ConfigError, match="tta"):
        Serving.resolve(no_tta_run, {"tta": "sometimes"})


def test_a_fold_keeps_both_views_and_serves_each_policy_from_them(no_tta_run):
    fold = Run.open(no_tta_run).fold(0)
    table = pd.read_csv(fold.predictions)
    assert set(PROB_COLUMNS + FLIP_COLUMNS + ["group", "pred"]) <= set(table.columns)
    _, plain = fold.oof(tta=False)
    _, tta = fold.oof(tta=True)
    assert np.allclose(tta, (table[PROB_COLUMNS].to_numpy() + table[FLIP_COLUMNS].to_numpy()) / 2, atol=1e-6)
    assert not np.allclose(plain, tta)
    # the fold's reported score is the config's serving (no TTA here), and so is the saved answer
    assert (table["pred"].to_numpy() == plain.argmax(1)).all()
    oof = Serving.resolve(no_tta_run, {"person_consistent": False}).oof()
    assert list(oof) == [0] and np.allclose(oof[0].probs, plain)


def test_the_tta_key_and_the_tta_switch_give_the_same_file(no_tta_run, tmp_path, mcls_cli):
    folder = SAMPLE / "eval" / "images"
    by_key, by_switch, on = (tmp_path / f"{n}.csv" for n in ("key", "switch", "on"))
    for args, out in ((["tta=true", "person_consistent=false"], by_key), (["--tta", "on", "--persons", "off"], by_switch),
                      (["tta=false", "person_consistent=false"], on)):
        r = mcls_cli("predict", "--run", no_tta_run, "--folder", folder, "--out", out, *args)
        assert r.returncode == 0, r.stderr
    assert by_key.read_text() == by_switch.read_text()
    # and the key acts: TTA on differs from the run's own serving (trained without TTA)
    assert not np.allclose(pd.read_csv(by_key)[PROB_COLUMNS].to_numpy(), pd.read_csv(on)[PROB_COLUMNS].to_numpy())


def test_predict_refuses_keys_that_mean_nothing_to_prediction(no_tta_run, tmp_path, mcls_cli):
    r = mcls_cli("predict", "--run", no_tta_run, "--out", tmp_path / "s.csv", "epochs=3")
    assert r.returncode == 2 and "epochs" in r.stderr
    assert all(k in r.stderr for k in (*SERVING_KEYS, "data_dir", "device", "on_bad_image"))
    r = mcls_cli("predict", "--run", no_tta_run, "--out", tmp_path / "s.csv", "--tta", "on", "tta=false")
    assert r.returncode == 2 and "--tta on contradicts tta=False" in r.stderr
    assert not (tmp_path / "s.csv").exists()


def test_notebook_05_serves_the_run_as_trained_unless_it_sets_tta(no_tta_run):
    """Set, tta beats the run's saved false; not set, the saved value serves (test_05_submission: a run saved with
    true serves true though the package's default is false)."""
    from test_notebooks import execute, metrics

    execute("05_submission", no_tta_run, tta=True)
    assert metrics(no_tta_run, "05_submission")["tta"] is True
