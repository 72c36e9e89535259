import subprocess
import sys

from conftest import ROOT


def run(*args):
    return subprocess.run([sys.executable, "-m", "mcls", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_folds_command():
    r = run("folds", "data_dir=data/sample", "n_folds=4")
    assert r.returncode == 0 and "All" in r.stdout


def test_check_command():
    r = run("check", "data_dir=data/sample")
    assert r.returncode == 0 and "48 persons, 336 training images, 21 eval images, 0 unreadable" in r.stdout


def test_bad_config_is_a_clear_error():
    r = run("train", "data_dir=data/sample", "epochz=3", "lr=fast")
    assert r.returncode == 2 and "unknown key 'epochz'" in r.stderr and "lr='fast'" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_data_is_a_clear_error(tmp_path):
    r = run("train", f"data_dir={tmp_path}", f"run_dir={tmp_path / 'run'}")
    assert r.returncode == 2 and "train.csv" in r.stderr and "file not found" in r.stderr


def test_predict_an_ensemble_of_runs_needs_an_output_path(trained_run):
    r = run("predict", "--run", str(trained_run), "--run", str(trained_run))
    assert r.returncode != 0 and "needs --out" in r.stderr


def test_a_bug_shows_its_traceback_and_a_user_error_keeps_its_sentence(monkeypatch, capsys):
    import pytest

    from mcls import cli
    from mcls.data import folds
    from mcls.errors import UserError

    def bug(*a, **k):
        raise ValueError("too many values to unpack")  # what a slip in the kit's own code raises

    monkeypatch.setattr(folds, "assign_folds", bug)
    with pytest.raises(ValueError, match="too many values"):
        cli.main(["folds", "data_dir=data/sample"])

    def refused(*a, **k):
        raise UserError("data/sample: n_folds=9 is more than the persons; lower n_folds")

    monkeypatch.setattr(folds, "assign_folds", refused)
    assert cli.main(["folds", "data_dir=data/sample"]) == 2
    err = capsys.readouterr().err
    assert "error: data/sample: n_folds=9 is more than the persons; lower n_folds" in err and "Traceback" not in err
