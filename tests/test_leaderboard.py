"""Leaderboard scores recorded beside each run's CV, and whether the CV tracks them."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from mcls.analysis.leaderboard import cv_lb_agreement, cv_lb_figure
from mcls.cli import main
from mcls.runs.layout import Run
from mcls.runs.records import list_runs


def test_lb_round_trips_and_keeps_every_score(trained_run, tmp_path, capsys):
    run = tmp_path / "runs" / "a"
    shutil.copytree(trained_run, run)
    assert main(["lb", str(run), "0.7512"]) == 0
    assert main(["lb", str(run), "0.7600", "--private", "0.7490", "--note", "tta off"]) == 0
    scores = Run(run).leaderboard
    assert [s["public"] for s in scores] == [0.7512, 0.76] and scores[1]["private"] == 0.749
    assert scores[1]["note"] == "tta off" and scores[1]["submission_sha1"] is None  # no submission.csv in the copy
    row = list_runs(tmp_path / "runs").iloc[0]
    assert row["lb_public"] == 0.76 and row["lb_private"] == 0.749 and row["cv"] == pytest.approx(
        json.loads((run / "summary.json").read_text())["pc_f1"])
    assert main(["lb", str(run), "75.1"]) == 2 and "not a macro F1 in 0..1" in capsys.readouterr().err


def test_a_planted_linear_relation_correlates_perfectly(tmp_path):
    cv = np.array([0.60, 0.65, 0.70, 0.72, 0.75])
    runs = pd.DataFrame({"run": list("abcde"), "cv": cv, "lb_public": 0.9 * cv - 0.05})
    a = cv_lb_agreement(runs)
    assert a["n"] == 5 and a["pearson"] == pytest.approx(1.0) and a["spearman"] == pytest.approx(1.0)
    assert a["mean_gap"] == pytest.approx(float((cv - (0.9 * cv - 0.05)).mean()))
    assert cv_lb_agreement(runs.iloc[:2])["pearson"] is None  # two runs say nothing about a correlation
    fig = cv_lb_figure(runs)
    assert "Pearson 1.00" in fig.axes[0].get_title()


def test_runs_prints_the_agreement_and_draws_the_figure(trained_run, tmp_path, capsys):
    for name, score in (("a", 0.5), ("b", 0.6), ("c", 0.7)):
        shutil.copytree(trained_run, tmp_path / "runs" / name)
        main(["lb", str(tmp_path / "runs" / name), str(score)])
    capsys.readouterr()
    assert main(["runs", str(tmp_path / "runs"), "--figure", str(tmp_path / "cv_lb.png")]) == 0
    out = capsys.readouterr().out
    assert "CV vs lb_public over 3 run(s)" in out and (tmp_path / "cv_lb.png").stat().st_size > 1000
