"""Optional experiment tracking: `tracker: mlflow` logs a finished run to a local MLflow store (no server)."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from mcls.config import Config
from mcls.runs.layout import Run


def log_run(cfg: Config, run_dir: str | Path) -> str | None:
    """Logs params, per-epoch and summary metrics, figures and run records; returns the MLflow run id (or None)."""
    if cfg.tracker != "mlflow":
        return None
    try:
        import mlflow
    except ImportError:
        raise ImportError("tracker=mlflow needs MLflow: .venv/bin/pip install -e '.[mlflow]'") from None
    run_dir = Path(run_dir).resolve()
    # The store sits beside the runs it describes; MLflow 3 keeps plain-file stores behind this opt-in.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri((run_dir.parent / "mlruns").as_uri())
    mlflow.set_experiment("mcls")
    with mlflow.start_run(run_name=run_dir.name) as tracked:
        mlflow.log_params({k: str(v) for k, v in cfg.to_dict().items()})
        run = Run(run_dir)
        for fold in run.folds:
            for row in pd.read_csv(fold.metrics).to_dict("records"):
                mlflow.log_metrics({f"{fold.dir.name}/{k}": float(v) for k, v in row.items() if k != "epoch"},
                                   step=int(row["epoch"]))
        mlflow.log_metrics({k: v for k, v in run.summary.items() if isinstance(v, float)})
        figures = [p for fold in run.folds for p in sorted(fold.dir.glob("*.png"))]
        for path in [run.config_file, run.info_file, *figures]:
            mlflow.log_artifact(str(path), artifact_path=path.parent.name if path.parent != run_dir else None)
        return tracked.info.run_id
