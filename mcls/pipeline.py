"""Runs the numbered notebooks headless with papermill, in order, resuming where a failed run stopped."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from mcls.config import Config
from mcls.io import write_json, write_text

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ("00_eda", "01_relabel", "02_face_crop", "03_train", "04_gradcam", "05_submission")
KERNEL = "mcls"


class PipelineError(RuntimeError):
    pass


def ensure_kernel(name: str = KERNEL) -> str:
    """Registers this interpreter as a Jupyter kernel inside its own prefix, so papermill never says NoSuchKernel."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().find_kernel_specs().get(name)
    if spec and json.loads((Path(spec) / "kernel.json").read_text())["argv"][0] == sys.executable:
        return name
    from ipykernel.kernelspec import install

    install(kernel_name=name, display_name=f"mcls ({Path(sys.prefix).name})", prefix=sys.prefix)
    return name


def pipeline_run_dir(cfg: Config) -> Path:
    # A fixed name (not a timestamp) so that running the same command again resumes the same run.
    return Path(cfg.run_dir or f"runs/pipeline-{Path(cfg.data_dir).resolve().name}").resolve()


def run_pipeline(cfg: Config, notebooks=NOTEBOOKS, log=print) -> dict:
    """Executes `notebooks` into <run_dir>/notebooks/; returns {notebook: seconds}. Finished notebooks are kept."""
    import logging

    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    logging.getLogger("papermill").setLevel(logging.WARNING)  # one line per notebook is ours to print

    run_dir = pipeline_run_dir(cfg)
    cfg = Config.from_dict({**cfg.to_dict(), "run_dir": str(run_dir), "data_dir": str(Path(cfg.data_dir).resolve()),
                            "relabel_file": str(Path(cfg.relabel_file).resolve()) if cfg.relabel_file else ""})
    config_file = run_dir / "pipeline_config.yaml"
    state_file = run_dir / "pipeline_state.json"
    if config_file.exists() and Config.from_yaml(config_file) != cfg:
        raise PipelineError(f"{run_dir} was started with other parameters ({config_file}); "
                            "use another run_dir for a new run")
    state = json.loads(state_file.read_text()) if state_file.exists() else {"done": {}}
    write_text(config_file, cfg.to_yaml())
    kernel = ensure_kernel()
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(notebooks, 1):
        tag = f"[{i}/{len(notebooks)}] {name}"
        if name in state["done"]:
            log(f"{tag}: done earlier ({state['done'][name]:.0f} s), kept")
            continue
        src = NOTEBOOK_DIR / f"{name}.ipynb"
        declared = pm.inspect_notebook(str(src))
        params = {k: v for k, v in cfg.to_dict().items() if k in declared}
        if "config_file" in declared:
            params["config_file"] = str(config_file)
        log(f"{tag}: running ...")
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(src), str(out_dir / f"{name}.ipynb"), parameters=params, kernel_name=kernel,
                                progress_bar=False, cwd=str(NOTEBOOK_DIR.parent))
        except PapermillExecutionError as err:
            raise PipelineError(f"{name} failed in cell {err.exec_count} ({err.ename}: {err.evalue}); the executed "
                                f"notebook is {out_dir / (name + '.ipynb')}. Re-run the same command to resume "
                                f"from {name}.") from None
        state["done"][name] = time.perf_counter() - start
        write_json(state_file, state)
        log(f"{tag}: done in {state['done'][name]:.0f} s")
    return state["done"]
