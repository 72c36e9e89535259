"""Optional experiment tracking: `tracker: mlflow` logs a finished run (params, metrics, figures, records and the
fold checkpoints) and, later, each submission written for it, to MLflow: a local store beside the runs, or a
team's server (`tracking_uri`), which then keeps the models and submissions if a machine dies."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from mcls.config import Config
from mcls.io import write_json
from mcls.runs.layout import Run

TRACKING = "tracking.json"  # where the run's MLflow run id is kept, so later submissions join that MLflow run


def _mlflow(cfg: Config, run_dir: Path):
    try:
        import mlflow
    except ImportError:
        raise ImportError("tracker=mlflow needs MLflow: .venv/bin/pip install -e '.[mlflow]'") from None
    if cfg.tracking_uri:
        mlflow.set_tracking_uri(cfg.tracking_uri)
    else:  # a store beside the runs it describes; MLflow 3 keeps plain-file stores behind this opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri((run_dir.parent / "mlruns").as_uri())
    mlflow.set_experiment("mcls")
    return mlflow


def log_run(cfg: Config, run_dir: str | Path) -> str | None:
    """Logs params, per-epoch and summary metrics, figures, run records and every fold's best.pt; returns the
    MLflow run id (or None when tracker is not mlflow)."""
    if cfg.tracker != "mlflow":
        return None
    run_dir = Path(run_dir).resolve()
    mlflow = _mlflow(cfg, run_dir)
    with mlflow.start_run(run_name=run_dir.name) as tracked:
        mlflow.log_params({k: str(v) for k, v in cfg.to_dict().items()})
        run = Run(run_dir)
        for fold in run.folds:
            for row in pd.read_csv(fold.metrics).to_dict("records"):
                mlflow.log_metrics({f"{fold.dir.name}/{k}": float(v) for k, v in row.items() if k != "epoch"},
                                   step=int(row["epoch"]))
        mlflow.log_metrics({k: v for k, v in run.summary.items() if isinstance(v, float)})
        figures = [p for fold in run.folds for p in sorted(fold.dir.glob("*.png"))]
        checkpoints = [fold.best for fold in run.folds]
        for path in [run.config_file, run.info_file, run.summary_file, *figures, *checkpoints]:
            mlflow.log_artifact(str(path), artifact_path=path.parent.name if path.parent != run_dir else None)
        write_json(run_dir / TRACKING, {"tracking_uri": mlflow.get_tracking_uri(), "run_id": tracked.info.run_id})
        return tracked.info.run_id


def log_submission(run_dir: str | Path, paths: list[Path]) -> str | None:
    """Adds a submission (and its probabilities) to the run's MLflow run, under submissions/; None when the run
    is not tracked."""
    run_dir = Path(run_dir).resolve()
    record = run_dir / TRACKING
    if not record.is_file():
        return None
    run = Run(run_dir)
    mlflow = _mlflow(run.config, run_dir)
    with mlflow.start_run(run_id=json.loads(record.read_text())["run_id"]):
        for path in paths:
            mlflow.log_artifact(str(path), artifact_path="submissions")
    return str(record)
