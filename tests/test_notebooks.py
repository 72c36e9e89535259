"""One papermill run per notebook on data/sample with smoke parameters, asserting on what each one leaves behind."""
import json
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from conftest import ROOT, SAMPLE

from mcls.config import Config
from mcls.pipeline import NOTEBOOK_DIR, NOTEBOOKS, PipelineError, ensure_kernel, run_pipeline

NOTEBOOK_FILES = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def execute(name: str, run_dir: Path, **params) -> Path:
    import papermill as pm

    out = run_dir / "notebooks" / f"{name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out), kernel_name=ensure_kernel(), cwd=str(ROOT),
                        progress_bar=False, parameters={"data_dir": str(SAMPLE), "run_dir": str(run_dir),
                                                        "smoke": True, **params})
    return out


def metrics(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / name / "metrics.json").read_text())


def test_00_eda(tmp_path):
    execute("00_eda", tmp_path)
    m = metrics(tmp_path, "00_eda")
    assert m["persons"] == 48 and m["images"] == 336 and sum(m["images_per_class"]) == 336
    assert m["folder_problems"] == 0 and set(m["extensions"]) == {".jpg", ".jpeg", ".png"}
    for fig in ("class_counts", "age_histogram", "class_grid", "rgb_histograms"):
        assert (tmp_path / "00_eda" / f"{fig}.png").stat().st_size > 1000


def test_03_train(tmp_path):
    execute("03_train", tmp_path, backbone="test_efficientnet", pretrained="none", n_folds=4)
    m = metrics(tmp_path, "03_train")
    assert 0 <= m["f1"] <= 1 and m["folds"] == [0]
    assert (tmp_path / "fold0" / "best.pt").is_file() and (tmp_path / "03_train" / "fold_scores.png").is_file()
    assert Config.from_yaml(tmp_path / "config.yaml").epochs == 1  # smoke reached the package


def test_05_submission(trained_run):
    execute("05_submission", trained_run)
    sub = pd.read_csv(trained_run / "submission.csv")
    info = pd.read_csv(SAMPLE / "eval" / "info.csv")
    assert list(sub["ImageID"]) == list(info["ImageID"])
    m = metrics(trained_run, "05_submission")
    assert m["rows"] == 21 and sum(m["predicted_class_counts"]) == 21
    assert (trained_run / "05_submission" / "predicted_classes.png").is_file()


def test_05_submission_averages_the_runs_ensemble_members(tiny_cfg, tmp_path):
    from mcls.train.run import train

    member = tmp_path / "small.yaml"
    member.write_text("img_size: 40\n")
    train(tiny_cfg.updated({"members": [str(member)], "calibrate_age": True, "fold": -1}))
    run = Path(tiny_cfg.run_dir)
    execute("05_submission", run)
    m = metrics(run, "05_submission")
    assert m["runs"] == [str(run.resolve()), str((run / "members" / "small").resolve())]
    assert len(m["checkpoints"]) == 8 and m["rows"] == 21
    # the calibration applied is the one fitted on the run and its member averaged
    record = json.loads((run / "calibration.json").read_text())
    assert m["age_log_bias"] == record["age_log_bias"] and len(record["runs"]) == 2


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_committed_notebooks_are_clean(path):
    book = nbformat.read(path, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), f"{path.name} carries outputs"
    first = code[0]
    assert "parameters" in first.metadata.get("tags", []), f"{path.name}: first code cell is not tagged parameters"
    values = {line.split("=")[0].strip(): line.split("=", 1)[1].split("#")[0].strip()
              for line in first.source.splitlines() if "=" in line and line[0] != "#"}
    assert set(values) - {"config_file"} <= set(Config.field_names()), "parameter names must be Config fields"
    # defaults live in mcls.config only: a value repeated here would silently beat a config_file's (e.g. a preset)
    assert all(v == "None" for k, v in values.items() if k not in ("run_dir", "config_file")), values
    assert "notebook_config(config_file" in code[1].source


def test_every_pipeline_notebook_exists():
    assert {p.stem for p in NOTEBOOK_FILES} == set(NOTEBOOKS)


def test_pipeline_stops_with_the_cell_and_resumes(tmp_path, trained_run):
    cfg = Config(data_dir=str(SAMPLE), run_dir=str(tmp_path / "pipe"), smoke=True)
    with pytest.raises(PipelineError, match=r"05_submission failed in cell \d+ .*FileNotFoundError.*resume"):
        run_pipeline(cfg, ("00_eda", "05_submission"), log=lambda *_: None)
    shutil.copytree(trained_run / "fold0", tmp_path / "pipe" / "fold0")  # the missing model arrives
    lines = []
    run_pipeline(cfg, ("00_eda", "05_submission"), log=lines.append)
    assert "kept" in lines[0] and "done in" in lines[-1]
    assert (tmp_path / "pipe" / "notebooks" / "05_submission.ipynb").is_file()
    assert (tmp_path / "pipe" / "submission.csv").is_file()
    with pytest.raises(PipelineError, match="other parameters"):
        run_pipeline(cfg.updated({"img_size": 32}), ("00_eda",))


def test_04_gradcam(trained_run):
    execute("04_gradcam", trained_run, cam_images=4)
    energy = metrics(trained_run, "04_gradcam")["cam_energy"]
    assert set(energy["heads"]) == {"mask", "gender", "age"} and energy["n_images"] > 0
    assert all(0 <= v <= 1 for head in energy["heads"].values() for v in head.values() if v is not None)
    pngs = sorted(p.name for p in (trained_run / "04_gradcam").glob("cam_gradcam_*.png"))
    assert any("misclassified_mask" in p for p in pngs) and any("person" in p for p in pngs)


def test_02_face_crop(tmp_path):
    execute("02_face_crop", tmp_path, crop_cache=str(tmp_path / "cache"))
    m = metrics(tmp_path, "02_face_crop")
    assert m["images"] == 40 and m["detection_rate"] >= 0.9 and m["img_per_s"] > 0
    for fig in ("confidence_histogram", "failures", "before_after"):
        assert (tmp_path / "02_face_crop" / f"{fig}.png").is_file()
    assert any((tmp_path / "cache").rglob("*.json"))  # detections were cached


def test_01_relabel_writes_the_queue_and_appends_reviewed_decisions(tmp_path):
    from mcls.data.table import load_train_table

    person = load_train_table(SAMPLE).drop_duplicates("person").iloc[0]
    given = ("male", "female")[person["gender"]]
    reviewed = tmp_path / "reviewed.csv"
    pd.DataFrame([{"person": person["person"], "field": "gender", "given": given, "suggested": "x", "score": 1.0,
                   "reason": "test", "check": "gender", "decision": "set",
                   "value": ("male", "female")[1 - person["gender"]]}]).to_csv(reviewed, index=False)
    relabels = tmp_path / "relabel.csv"
    execute("01_relabel", tmp_path, n_folds=4, relabel_file=str(relabels), relabel_decisions=str(reviewed))
    m = metrics(tmp_path, "01_relabel")
    assert m["persons"] == 48 and m["suspects"] >= 1 and (tmp_path / "01_relabel" / "suspect_1.png").is_file()
    written = pd.read_csv(relabels, dtype=str)
    assert len(written) == 1 and written["old"][0] == given and written["new"][0] != given
    queue = pd.read_csv(tmp_path / "01_relabel" / "queue.csv", dtype=str)
    assert not ((queue["person"] == person["person"]) & (queue["field"] == "gender")).any()  # decided: not re-asked
