"""Run records: what a run was made from, `mcls runs`, and the optional MLflow tracker."""
import json
from pathlib import Path

import pytest

from mcls.runs.records import list_runs
from mcls.train.run import train


def test_run_records_and_listing(tiny_cfg, tmp_path):
    train(tiny_cfg)
    train(tiny_cfg.updated({"run_dir": str(tmp_path / "run2"), "loss": "focal"}))
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert len(info["data_fingerprint"]) == 16 and {"commit", "dirty"} <= set(info["git"])
    df = list_runs(tmp_path)
    assert list(df["run"]) == ["run", "run2"] and "loss" in df.columns and "epochs" not in df.columns
    assert df["f1"].between(0, 1).all() and df["data"].nunique() == 1


def test_data_fingerprint_changes_with_relabeling(tiny_cfg, tmp_path):
    from mcls.data.table import data_fingerprint, load_train_table

    relabels = tmp_path / "relabel.csv"
    pid = load_train_table(tiny_cfg.data_dir)["person"].iloc[0]
    relabels.write_text(f"id,field,new,reason\n{pid},age,99,test\n")
    a = data_fingerprint(load_train_table(tiny_cfg.data_dir))
    b = data_fingerprint(load_train_table(tiny_cfg.data_dir, relabel_file=relabels))
    assert a != b


def test_mlflow_tracker_logs_to_a_local_store(tiny_cfg, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    train(tiny_cfg.updated({"tracker": "mlflow"}))
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    runs = mlflow.search_runs(experiment_names=["mcls"])
    assert len(runs) == 1 and runs["params.backbone"][0] == "test_efficientnet"
    assert 0 <= runs["metrics.f1"][0] <= 1 and "metrics.fold0/train_loss" in runs.columns


def test_a_tracked_run_keeps_its_checkpoints_and_submissions_on_the_tracking_server(tiny_cfg, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from mcls.infer.submission import write_submission

    server = tmp_path / "elsewhere" / "mlruns"  # stands for a team's server: not beside the run
    train(tiny_cfg.updated({"tracker": "mlflow", "tracking_uri": server.as_uri()}))
    write_submission(tiny_cfg.data_dir, tiny_cfg.run_dir, device="cpu")
    run_id = json.loads((Path(tiny_cfg.run_dir) / "tracking.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=server.as_uri())
    assert {a.path for a in client.list_artifacts(run_id, "fold0")} >= {"fold0/best.pt"}
    assert {a.path for a in client.list_artifacts(run_id, "submissions")} == {"submissions/submission.csv",
                                                                             "submissions/submission_probs.csv"}
    assert not (tmp_path / "mlruns").exists()  # nothing went to the local default store
    mlflow.set_tracking_uri(None)
