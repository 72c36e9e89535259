"""Atomic writes: a crash leaves the old file or the new one, never half of one that a later run trusts."""
from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd


@contextmanager
def atomic_path(path: str | Path):
    """Yields a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def write_csv(path: str | Path, df: pd.DataFrame, **kwargs) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kwargs)


def save_torch(path: str | Path, obj) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def keep_previous(path: str | Path, new_text: str) -> Path | None:
    """Before `path` is replaced by different content, moves the old file to <stem>.<mtime><suffix>; returns it."""
    path = Path(path)
    if not path.exists() or path.read_text() == new_text:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    backup = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    os.replace(path, backup)
    return backup


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)
