"""Runs the numbered notebooks headless with papermill, in order, resuming where a failed run stopped."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

from mcls.config import Config
from mcls.io import write_json, write_text

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ("00_eda", "01_relabel", "02_face_crop", "03_train", "04_gradcam", "05_submission")
KERNEL = "mcls"
# papermill passes these to nbclient: a kernel that keeps its own warnings to itself
KERNEL_OPTIONS = {"extra_arguments": ["--IPKernelApp.log_level=ERROR"]}


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


def pipeline_run_dir(values: dict) -> Path:
    # A fixed name (not a timestamp) so that running the same command again resumes the same run.
    data_dir = values.get("data_dir") or Config().data_dir
    return Path(values.get("run_dir") or f"runs/pipeline-{Path(data_dir).resolve().name}").resolve()


def pipeline_settings(values: dict) -> dict:
    """The keys the user set (a config file's and the command line's), with data_dir, run_dir and relabel_file
    made absolute (the notebooks run from the project root); checked as a Config before anything runs."""
    values = dict(values)
    values["run_dir"] = str(pipeline_run_dir(values))
    for key in ("data_dir", "relabel_file"):
        if values.get(key):
            values[key] = str(Path(values[key]).resolve())
    Config.from_dict(values)
    return values


def run_pipeline(values: dict, notebooks=NOTEBOOKS, log=print) -> dict:
    """Executes `notebooks` into <run_dir>/notebooks/; returns {notebook: seconds}. Finished notebooks are kept.

    `values` are the config keys the user set. They reach every notebook through one file, its `config_file`
    parameter, and nothing else: each notebook then prints a key as set by the config file or as the package's
    default, which is what happened (injecting every key as a notebook parameter would label them all
    "notebook")."""
    import logging

    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    logging.getLogger("papermill").setLevel(logging.WARNING)  # one line per notebook is ours to print

    values = pipeline_settings(values)
    cfg = Config.from_dict(values)
    run_dir = Path(values["run_dir"])
    config_file = run_dir / "pipeline_config.yaml"
    state_file = run_dir / "pipeline_state.json"
    if config_file.exists() and Config.from_yaml(config_file) != cfg:
        raise PipelineError(f"{run_dir} was started with other parameters ({config_file}); "
                            "use another run_dir for a new run")
    state = json.loads(state_file.read_text()) if state_file.exists() else {"done": {}}
    write_text(config_file, yaml.safe_dump(values, sort_keys=False))
    kernel = ensure_kernel()
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(notebooks, 1):
        tag = f"[{i}/{len(notebooks)}] {name}"
        if name in state["done"]:
            log(f"{tag}: done earlier ({state['done'][name]:.0f} s), kept")
            continue
        log(f"{tag}: running ...")
        start = time.perf_counter()
        try:
            # the kernel's own warnings (e.g. "running over TCP without encryption") are not the user's business
            pm.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out_dir / f"{name}.ipynb"),
                                parameters={"config_file": str(config_file)}, kernel_name=kernel,
                                progress_bar=False, cwd=str(NOTEBOOK_DIR.parent), **KERNEL_OPTIONS)
        except PapermillExecutionError as err:
            raise PipelineError(f"{name} failed in cell {err.exec_count} ({err.ename}: {err.evalue}); the executed "
                                f"notebook is {out_dir / (name + '.ipynb')}. Re-run the same command to resume "
                                f"from {name}.") from None
        state["done"][name] = time.perf_counter() - start
        write_json(state_file, state)
        log(f"{tag}: done in {state['done'][name]:.0f} s")
    return state["done"]
