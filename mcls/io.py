"""Atomic writes: a crash leaves the old file or the new one, never half of one that a later run trusts."""
from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path, keep_previous: bool = False):
    """Yields a temporary path beside `path`; once it is completely written it replaces `path` in one rename.

    The file gets the mode the user's umask gives (mkstemp's 0600 would lock teammates out of a shared run). With
    `keep_previous`, an existing `path` with other content is first kept as <stem>.<mtime><suffix> (a hard link,
    so `path` is never missing: a failed write, e.g. a full disk, leaves the old file where it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        if keep_previous and path.is_file() and not filecmp.cmp(path, tmp, shallow=False):
            _keep_copy(path)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if type(err).__module__ == "builtins" and err.errno and err.filename in (None, str(tmp)):
            # a failed write names nothing, or the hidden temporary file: name the file the user knows
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _keep_copy(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    backup = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    try:
        os.link(path, backup)
    except OSError:  # a file system without hard links, or the name taken within the same second
        shutil.copy2(path, backup)
    return backup


def writable_output(path: str | Path, what: str = "output") -> Path:
    """`path` as a file that can be written, checked before any long work: one sentence if it cannot."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name, e.g. {path / 'predictions.csv'}")
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    reason = write_problem(parent)
    if reason:
        raise OutputError(f"{what} {path}: cannot write in {parent} ({reason}); choose another path or fix its "
                          "permissions")
    return path


def write_problem(folder: str | Path) -> str | None:
    """Why nothing can be written in `folder`, in the operating system's words (a read-only file system, no
    permission, a full disk), or None. It tries: permission bits alone miss a read-only mount and a full disk."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return err.strerror or type(err).__name__
    return None


class OutputError(OSError):
    """A file the kit was asked to write cannot be written; the message names it and says what to do."""


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def write_csv(path: str | Path, df: pd.DataFrame, keep_previous: bool = False, **kwargs) -> None:
    with atomic_path(path, keep_previous) as tmp:
        df.to_csv(tmp, index=False, **kwargs)


def file_digest(path: str | Path) -> str:
    """sha1 of the file's bytes: what content-keyed caches key on (a path or a modification time can lie)."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def save_npy(path: str | Path, arr) -> None:
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def save_torch(path: str | Path, obj) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)
