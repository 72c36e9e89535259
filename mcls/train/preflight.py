"""Everything a training config refers to, checked before the run folder is made and before the first epoch:
an hour of training must not end on a typo in a member's name. Every problem is reported at once, one sentence
each, naming the key and what to do."""
from __future__ import annotations

from pathlib import Path

from mcls.config import Config, ConfigError


def reference_problems(cfg: Config) -> list[str]:
    """What is wrong with the files, presets, runs and device `cfg` names; [] when it can start."""
    problems = []
    problems += _run_dir_problems(cfg.run_dir)
    problems += _device_problems(cfg.device)
    problems += _backbone_problems(cfg.backbone)
    if cfg.mask_backbone:
        problems += _backbone_problems(cfg.mask_backbone, key="mask_backbone")
    problems += _pretrained_problems(cfg.pretrained)
    if cfg.relabel_file:
        problems += _relabel_problems(cfg)
    if cfg.pseudo_label != "none":
        problems += _pseudo_run_problems(cfg)
    if cfg.external_data:
        problems += _external_problems(cfg)
    if cfg.members:
        problems += [p for p in _member_problems(cfg) if p.split(": ", 1)[-1] not in problems]
    return problems


def check_references(cfg: Config) -> None:
    problems = reference_problems(cfg)
    if problems:
        raise ConfigError("the run cannot start:\n  " + "\n  ".join(problems))


def _run_dir_problems(run_dir: str) -> list[str]:
    from mcls.io import write_problem

    path = Path(run_dir or "runs")
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        return [f"run_dir={run_dir!r}: {parent} is a file, not a folder"]
    reason = write_problem(parent)
    if reason:
        return [f"run_dir={run_dir!r}: cannot write in {parent} ({reason}); choose another run_dir"]
    return []


def _device_problems(device: str) -> list[str]:
    from mcls.runtime.device import select_device

    try:
        select_device(device)
    except ConfigError as err:
        return [str(err)]
    return []


def _backbone_problems(backbone: str, key: str = "backbone") -> list[str]:
    import timm

    if backbone in timm.list_models():
        return []
    close = timm.list_models(f"*{backbone[:6]}*")[:8]
    return [f"{key}={backbone!r} is not a timm model name" + (f"; similar: {close}" if close else "")]


def _pretrained_problems(pretrained: str) -> list[str]:
    if pretrained in ("offline", "timm", "none"):
        return []
    path = Path(pretrained)
    if not path.is_file():
        return [f"pretrained={pretrained!r}: no such file (or use offline, timm or none)"]
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a file that is not a state_dict
        return [f"pretrained={pretrained!r} is not a saved state_dict of backbone weights ({type(err).__name__}); "
                "give a file written by torch.save(model.state_dict())"]
    if not isinstance(state, dict) or not state:
        return [f"pretrained={pretrained!r} holds {type(state).__name__}, not a state_dict of backbone weights"]
    return []


def _relabel_problems(cfg: Config) -> list[str]:
    from mcls.data.table import DataError, apply_relabels, read_persons, read_relabels

    try:
        apply_relabels(read_persons(cfg.data_dir), read_relabels(cfg.relabel_file))
    except DataError as err:
        return [f"relabel_file={cfg.relabel_file!r}: {'; '.join(err.problems[:5])}"]
    return []


def _pseudo_run_problems(cfg: Config) -> list[str]:
    from mcls.runs.layout import Run

    run = Run(cfg.pseudo_run)
    folds = range(cfg.n_folds) if cfg.fold == -1 else [cfg.fold]
    missing = [k for k in folds if not run.fold(k).best.is_file()]
    if missing:
        return [f"pseudo_run={cfg.pseudo_run!r} has no model for fold(s) {missing}; train those folds of it first"]
    return []


def _external_problems(cfg: Config) -> list[str]:
    from mcls.data import embeddings
    from mcls.data.external import read_external
    from mcls.data.table import DataError

    try:
        external = read_external(cfg.external_data)
    except DataError as err:
        shown = "; ".join(err.problems[:5]) + (f"; and {len(err.problems) - 5} more" if len(err.problems) > 5 else "")
        return [f"external_data={cfg.external_data!r}: {shown}"]
    problems = []
    if not (external["age"] >= cfg.external_min_age).any():
        problems.append(f"external_data={cfg.external_data!r}: no face is aged {cfg.external_min_age} or over "
                        f"(external_min_age); lower it or give another set")
    if not embeddings.available():  # the leak guard compares faces by dlib's descriptors
        problems.append(f"external_data needs dlib for the leak guard: {embeddings.INSTALL}")
    return problems


def _member_problems(cfg: Config) -> list[str]:
    from mcls.train.members import member_configs

    try:
        members = member_configs(cfg)
    except ConfigError as err:
        return [f"members: {err}"]
    return [f"member {name}: {p}" for name, member in members for p in reference_problems(member)]
