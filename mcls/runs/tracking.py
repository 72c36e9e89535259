"""Optional experiment tracking: `tracker: mlflow` logs a finished run to a local MLflow store (no server)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from mcls.config import Config


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
    with mlflow.start_run(run_name=run_dir.name) as run:
        mlflow.log_params({k: str(v) for k, v in cfg.to_dict().items()})
        for metrics_csv in sorted(run_dir.glob("fold*/metrics.csv")):
            fold = metrics_csv.parent.name
            for row in pd.read_csv(metrics_csv).to_dict("records"):
                mlflow.log_metrics({f"{fold}/{k}": float(v) for k, v in row.items() if k != "epoch"},
                                   step=int(row["epoch"]))
        summary = json.loads((run_dir / "summary.json").read_text())
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)})
        for path in [run_dir / "config.yaml", run_dir / "run_info.json", *sorted(run_dir.glob("fold*/*.png"))]:
            mlflow.log_artifact(str(path), artifact_path=path.parent.name if path.parent != run_dir else None)
        return run.info.run_id
