"""Optuna sweeps: each trial a run, a bad space refused before any trial, a killed sweep resumed."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import ROOT, SAMPLE, TINY

from mcls.config import Config, ConfigError
from mcls.train.sweep import read_space

SPACE = ("lr: {type: float, low: 3.0e-4, high: 3.0e-3, log: true}\n"
         "augment: {type: categorical, choices: [light, strong]}\n")


def test_a_bad_space_is_refused_whole_before_any_trial(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 0, high: 1.0e-3}\nnot_a_key: {type: int, low: 1, high: 2}\n"
                     "augment: {type: categorical, choices: [light, sparkly]}\nepochs: {type: int, low: 5, high: 2}\n")
    with pytest.raises(ConfigError) as caught:
        read_space(space, Config())
    message = str(caught.value)
    for says in ("lr: 0 is refused", "not_a_key: not a config key", "augment: 'sparkly' is refused",
                 "epochs: needs low < high"):
        assert says in message


def test_a_two_trial_sweep_killed_after_its_first_trial_resumes_to_two(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "base.yaml").write_text("".join(f"{k}: {v}\n" for k, v in TINY.items()) + f"data_dir: {SAMPLE}\n")
    cmd = [sys.executable, "-m", "mcls", "sweep", "--config", str(tmp_path / "base.yaml"), "--space",
           str(tmp_path / "space.yaml"), "--trials", "2", "--folds", "0", "--dir", str(tmp_path / "sweep")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    deadline = time.time() + 240
    while time.time() < deadline and not (tmp_path / "sweep" / "trial-000" / "summary.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # in trial 1's first steps (or between the trials)
    proc.wait()
    assert (tmp_path / "sweep" / "trial-000" / "summary.json").exists(), "trial 0 did not finish in time"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(tmp_path / "sweep" / "trials.csv")
    finished = table[table["state"].isin(["complete", "pruned"])]
    assert len(finished) == 2 and set(table["state"]) <= {"complete", "pruned", "fail"}
    assert (table["state"] == "fail").sum() <= 1  # the trial the kill interrupted, if it had started
    for run in finished["run_dir"]:
        assert (tmp_path / "sweep" / run.rsplit("/", 1)[-1] / "config.yaml").is_file()  # each trial is a run
    assert (tmp_path / "sweep" / "optimization_history.png").stat().st_size > 1000
    assert "sweep folder:" in done.stdout


def test_a_sweep_runs_from_a_notebook_cell_under_papermill(tmp_path):
    import nbformat
    import papermill as pm

    from mcls.pipeline import ensure_kernel

    (tmp_path / "space.yaml").write_text(SPACE)
    code = (f"from mcls.config import Config\nfrom mcls.train.sweep import read_space, sweep\n"
            f"base = Config(data_dir={str(SAMPLE)!r}, **{TINY!r})\n"
            f"table = sweep(base, read_space({str(tmp_path / 'space.yaml')!r}, base), trials=1, folds=[0], "
            f"sweep_dir={str(tmp_path / 'sweep')!r})\ntable")
    src, out = tmp_path / "sweep.ipynb", tmp_path / "sweep.out.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)]), src)
    pm.execute_notebook(str(src), str(out), kernel_name=ensure_kernel(), cwd=str(ROOT), progress_bar=False)
    assert len(pd.read_csv(tmp_path / "sweep" / "trials.csv")) == 1
    outputs = nbformat.read(out, as_version=4).cells[0].outputs
    assert any("trial 0: validation macro F1" in o.get("text", "") for o in outputs)
