"""A notebook's parameter cell made into its Config: a parameter left at None is not given (the config file's
value, else the package default, stands), a value given beats the file, and the notebooks chain through one run
folder unless run_dir is set."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mcls.config import Config, read_yaml_keys


def given_values(config_file: str | Path | None, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters a notebook (a value that is not None) or its config_file sets; the others are not given, so
    whatever they configure keeps its own value (the package default, or a trained run's config)."""
    from_file = read_yaml_keys(config_file)[1] if config_file else {}
    return {k: v if v is not None else from_file[k] for k, v in params.items() if v is not None or k in from_file}


# Notebooks chain through one run folder (03 trains it, 04 and 05 read it) unless run_dir is set.
NOTEBOOK_RUN_DIR = "runs/notebooks"


def notebook_config(config_file: str | Path | None, params: dict[str, Any]) -> Config:
    """A notebook's config. A parameter left at None is not set by the notebook: it takes config_file's value for
    that key, else the package default, so a preset such as "large" is not undone by values the notebook merely
    repeats. A parameter given a value beats the file. Prints each parameter's value and where it came from, and
    the other keys config_file sets (`mcls pipeline` passes its whole config that way)."""
    path, from_file = read_yaml_keys(config_file) if config_file else ("defaults", {})
    given = {k: v for k, v in params.items() if v is not None}
    cfg = Config.from_dict(from_file, source=str(path)).updated(given)
    if "run_dir" in params and not cfg.run_dir:
        cfg = cfg.updated({"run_dir": NOTEBOOK_RUN_DIR})
    width = max(map(len, params), default=0)
    for key in params:
        source = "notebook" if key in given else "config_file" if key in from_file else "default"
        print(f"{key:<{width}} = {getattr(cfg, key)!r}  ({source})")
    others = {k: v for k, v in from_file.items() if k not in params}
    if others:
        print(f"also set by {path}: " + ", ".join(f"{k}={v!r}" for k, v in others.items()))
    return cfg
