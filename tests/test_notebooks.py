"""One papermill run per notebook on data/sample with smoke parameters, asserting on what each one leaves behind
and on what a person opening the executed notebook sees."""
import base64
import hashlib
import json
import re
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from conftest import ROOT, SAMPLE

from mcls.config import Config
from mcls.pipeline import NOTEBOOK_DIR, NOTEBOOKS, PipelineError, ensure_kernel, run_pipeline

NOTEBOOK_FILES = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300


def execute(name: str, run_dir: Path, **params) -> Path:
    import papermill as pm

    out = run_dir / "notebooks" / f"{name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    # a hung kernel fails its test in minutes instead of stalling the whole suite
    pm.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out), kernel_name=ensure_kernel(), cwd=str(ROOT),
                        progress_bar=False, execution_timeout=CELL_TIMEOUT_S,
                        parameters={"data_dir": str(SAMPLE), "run_dir": str(run_dir), "smoke": True, **params})
    return out


def metrics(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / name / "metrics.json").read_text())


def outputs(notebook: Path) -> tuple[list[str], list[str]]:
    """(digests of every image/png output, every text output) of an executed notebook, in cell order."""
    images, texts = [], []
    for cell in nbformat.read(notebook, as_version=4).cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" in data:
                images.append(hashlib.sha1(base64.b64decode(data["image/png"])).hexdigest())
            texts.append(out.get("text", "") + data.get("text/plain", ""))
    return images, texts


def assert_shows_what_it_saved(run_dir: Path, name: str) -> list[str]:
    """Every PNG the notebook saved under <run_dir>/<name>/ is shown in the executed notebook, byte for byte and
    once; no output is a progress bar frozen at its first state. Returns the text outputs."""
    images, texts = outputs(run_dir / "notebooks" / f"{name}.ipynb")
    saved = {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in (run_dir / name).glob("*.png")}
    assert saved, f"{name} saved no figure"
    counts = {png: images.count(digest) for png, digest in saved.items()}
    assert all(n == 1 for n in counts.values()), f"{name}: times each saved figure is shown: {counts}"
    frozen = [t for t in texts if re.search(r"\b0%\|", t)]
    assert not frozen, f"{name} shows a progress bar at 0%: {frozen[0][:80]!r}"
    return texts


def test_00_eda(tmp_path):
    execute("00_eda", tmp_path, external_data=str(ROOT / "data" / "external-sample"))
    m = metrics(tmp_path, "00_eda")
    assert m["persons"] == 48 and m["images"] == 336 and sum(m["images_per_class"]) == 336
    assert m["folder_problems"] == 0 and set(m["extensions"]) == {".jpg", ".jpeg", ".png"}
    for fig in ("class_counts", "age_histogram", "class_grid", "rgb_histograms", "external_ages"):
        assert (tmp_path / "00_eda" / f"{fig}.png").stat().st_size > 1000
    texts = assert_shows_what_it_saved(tmp_path, "00_eda")
    # the external set's cells beside the competition's: 4 faces in each of the sample's six cells
    table = next(t for t in texts if "external faces" in t)
    assert re.search(r"female\s+<30\s+8\s+4", table) and re.search(r"all\s+under 18\s+0\s+0", table)


def test_03_train(tmp_path):
    execute("03_train", tmp_path, backbone="test_efficientnet", pretrained="none", n_folds=4, smoke=False,
            img_size=32, epochs=2, external_data="data/external-sample", external_training="both")
    m = metrics(tmp_path, "03_train")
    assert 0 <= m["f1"] <= 1 and m["folds"] == [0]
    assert (tmp_path / "fold0" / "best.pt").is_file() and (tmp_path / "03_train" / "fold_scores.png").is_file()
    assert Config.from_yaml(tmp_path / "config.yaml").epochs == 2  # the notebook's parameters reached the package
    texts = assert_shows_what_it_saved(tmp_path, "03_train")
    epoch_lines = re.findall(r"^fold 0 epoch (\d)/2: train loss [\d.]+, val loss [\d.]+, val F1 [\d.]+ as served "
                             r"\([\d.]+ per image: mask [\d.]+, gender [\d.]+, age [\d.]+\), \d+ img/s", "\n".join(texts),
                             re.M)
    assert epoch_lines == ["1", "2"]  # one line per epoch, in the training cell's output
    # the external data's leak guard line, its pretraining and joint training, above its pairs and distances
    assert re.search(r"^external data data/external-sample: kept \d+ of 24 external faces; left out 0 under 18, "
                     r"\d+ unreadable, .* with no face found \(threshold [\d.]+\)$", "\n".join(texts), re.M)
    assert re.search(r"^the \d+ faces kept \(.*\) pretrained the gender/age backbone for 5 epochs "
                     r"in [\d.]+ min( \(taken from the cache \S+\))?; then join every fold's batches \(0.5 per "
                     r"competition row", "\n".join(texts), re.M)
    images, _ = outputs(tmp_path / "notebooks" / "03_train.ipynb")
    for name in ("leak_pairs", "nearest_distance"):
        assert hashlib.sha1((tmp_path / "external" / f"{name}.png").read_bytes()).hexdigest() in images


def test_05_submission(trained_run, tmp_path):
    # the run judged against itself: the comparison's known answer is no difference, with an interval at 0; and a
    # teammate's submission that says "old woman, no mask" everywhere, to show where the two disagree
    info = pd.read_csv(SAMPLE / "eval" / "info.csv")
    teammate = tmp_path / "teammate.csv"
    pd.DataFrame({"ImageID": info["ImageID"], "ans": 17}).to_csv(teammate, index=False)
    execute("05_submission", trained_run, reference_run=str(trained_run), compare_with=str(teammate))
    sub = pd.read_csv(trained_run / "submission.csv")
    assert list(sub["ImageID"]) == list(info["ImageID"])
    m = metrics(trained_run, "05_submission")
    assert m["rows"] == 21 and sum(m["predicted_class_counts"]) == 21
    assert m["tta"] is True  # as the run was trained (TINY), though the package's default is false: not given here
    assert (trained_run / "05_submission" / "predicted_classes.png").is_file()
    assert m["compare"]["metrics"]["f1"]["delta"] == 0 and m["compare"]["metrics"]["f1"]["interval"] == [0, 0]
    shown = "".join(assert_shows_what_it_saved(trained_run, "05_submission"))
    assert "verdict (macro F1): not told apart with 12 persons" in shown
    assert "compare.png" in {p.name for p in (trained_run / "05_submission").glob("*.png")}
    assert m["disagreements_with"] == str(teammate) and 0 < m["disagreements"] <= 21
    assert (trained_run / "05_submission" / "disagreements.png").is_file()


def test_05_submission_averages_the_runs_ensemble_members(members_run):
    run, _ = members_run
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
    assert all(v == "None" for k, v in values.items() if k != "config_file"), values
    assert "notebook_config(config_file" in code[1].source


def test_every_pipeline_notebook_exists():
    assert {p.stem for p in NOTEBOOK_FILES} == set(NOTEBOOKS)


def test_pipeline_stops_with_the_cell_and_resumes(tmp_path, trained_run):
    values = dict(data_dir=str(SAMPLE), run_dir=str(tmp_path / "pipe"), smoke=True)
    with pytest.raises(PipelineError, match=r"05_submission failed in cell \d+ .*FileNotFoundError.*resume"):
        run_pipeline(values, ("00_eda", "05_submission"), log=lambda *_: None)
    shutil.copytree(trained_run / "fold0", tmp_path / "pipe" / "fold0")  # the missing model arrives
    shutil.copy(trained_run / "config.yaml", tmp_path / "pipe" / "config.yaml")
    lines = []
    run_pipeline(values, ("00_eda", "05_submission"), log=lines.append)
    assert "kept" in lines[0] and "done in" in lines[-1]
    assert (tmp_path / "pipe" / "notebooks" / "05_submission.ipynb").is_file()
    assert (tmp_path / "pipe" / "submission.csv").is_file()
    with pytest.raises(PipelineError, match="other parameters"):
        run_pipeline({**values, "img_size": 32}, ("00_eda",))


def test_pipeline_notebooks_say_where_each_parameter_came_from(tmp_path):
    run_pipeline(dict(data_dir=str(SAMPLE), run_dir=str(tmp_path), smoke=True), ("00_eda",), log=lambda *_: None)
    shown = " ".join(" ".join(assert_shows_what_it_saved(tmp_path, "00_eda")).split())
    # the user set data_dir, run_dir and smoke; the pipeline injects nothing else as a notebook parameter
    assert f"data_dir = '{SAMPLE}' (config_file)" in shown and "smoke = True (config_file)" in shown
    assert "age_bounds = [30, 60] (default)" in shown and "(notebook)" not in shown
    assert shown.count("train_old_age =") == 1  # printed once


def test_pipeline_ends_with_the_score_the_run_folder_and_the_submission(tmp_path, trained_run, capsys):
    from mcls.cli import main

    shutil.copytree(trained_run, tmp_path / "run")
    main(["pipeline", f"data_dir={SAMPLE}", f"run_dir={tmp_path / 'run'}", "smoke=true", "--only", "05_submission"])
    out = capsys.readouterr()
    last = out.out.strip().splitlines()[-4:]
    assert last[0].startswith("validation macro F1 ") and "mask " in last[0] and "held-out persons" in last[0]
    assert last[2] == f"submission:  {tmp_path / 'run' / 'submission.csv'}"
    assert "without encryption" not in out.out + out.err  # the kernel's own warnings are not shown


def test_04_gradcam(trained_run):
    execute("04_gradcam", trained_run, cam_images=4)
    energy = metrics(trained_run, "04_gradcam")["cam_energy"]
    assert set(energy["heads"]) == {"mask", "gender", "age"} and energy["n_images"] > 0
    assert all(0 <= v <= 1 for head in energy["heads"].values() for v in head.values() if v is not None)
    pngs = sorted(p.name for p in (trained_run / "04_gradcam").glob("cam_gradcam_*.png"))
    assert any("misclassified_mask" in p for p in pngs) and any("person" in p for p in pngs)
    assert_shows_what_it_saved(trained_run, "04_gradcam")
    mistakes = pd.DataFrame(metrics(trained_run, "04_gradcam")["mistakes"])
    assert len(mistakes) == 3 + 2 + 3 and mistakes["wrong"].le(mistakes["images"]).all()
    # the browser: its first grid as a plain figure (what its controls update in place), then the controls
    last = nbformat.read(trained_run / "notebooks" / "04_gradcam.ipynb", as_version=4).cells[-1]
    kinds = [("image/png" in o.get("data", {}), "application/vnd.jupyter.widget-view+json" in o.get("data", {}))
             for o in last.outputs]
    assert kinds == [(True, False), (False, True)], kinds


def test_02_face_crop(tmp_path):
    execute("02_face_crop", tmp_path, crop_cache=str(tmp_path / "cache"))
    m = metrics(tmp_path, "02_face_crop")
    assert m["images"] == 40 and m["detection_rate"] >= 0.9 and m["img_per_s"] > 0
    for fig in ("confidence_histogram", "failures", "before_after"):
        assert (tmp_path / "02_face_crop" / f"{fig}.png").is_file()
    assert any((tmp_path / "cache").rglob("*.json"))  # detections were cached
    assert_shows_what_it_saved(tmp_path, "02_face_crop")


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
    assert_shows_what_it_saved(tmp_path, "01_relabel")


def test_a_progress_bar_in_an_executed_notebook_is_updated_and_cleared_not_frozen(tmp_path):
    import papermill as pm

    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import time\nfrom mcls.runtime.progress import progress\n"
        "for _ in progress(range(3), desc='work', delay=0):\n    time.sleep(0.6)\nprint('done')")])
    src, out = tmp_path / "bar.ipynb", tmp_path / "bar.out.ipynb"
    nbformat.write(book, src)
    pm.execute_notebook(str(src), str(out), kernel_name=ensure_kernel(), cwd=str(ROOT), progress_bar=False)
    cell = nbformat.read(out, as_version=4).cells[0]
    bars = [o for o in cell.outputs if o.output_type == "display_data"]
    assert len(bars) == 1 and bars[0].data["text/plain"] == ""  # one line, updated in place, cleared at the end
    assert cell.outputs[-1].text == "done\n"
