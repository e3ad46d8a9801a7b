"""Crash-safe writes: every output goes to a temporary name beside it, then is renamed.

:func:`atomic_file` is the one writer of a file (any format: the caller writes the temporary
path, with any library); :func:`write_text` and :func:`write_json` use it; :func:`atomic_dir`
does the same for a folder (zarr stores, report folders).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PUBLIC_MODE = 0o644
"""Permissions of outputs meant to be read by others (reports, rasters, GeoParquet)."""


@contextmanager
def atomic_file(
    path: str | Path, *, suffix: str = ".tmp", mode: int | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    On any error the temporary file is removed and ``path`` is left as it was.

    Parameters
    ----------
    path
        Destination file; its folder is created if needed.
    suffix
        Suffix of the temporary name (``.tmp.tif`` where a library reads the extension).
    mode
        Permissions given to the file before the rename; None keeps those of
        :func:`tempfile.mkstemp` (owner only).

    Yields
    ------
    Path
        The temporary file (it exists, empty), to be written by the caller.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=p.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str, *, mode: int | None = None) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file beside it, then rename).

    Parameters
    ----------
    path
        Destination file; its folder is created if needed.
    text
        The content (UTF-8).
    mode
        Permissions of the file (see :func:`atomic_file`).

    Returns
    -------
    Path
        The written path.
    """
    with atomic_file(path, mode=mode) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def write_json(path: str | Path, obj: Any, *, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (temporary file beside it, then rename).

    Parameters
    ----------
    path
        Destination file; its folder is created if needed.
    obj
        A JSON-serialisable object.
    indent
        Indentation passed to :func:`json.dumps`.

    Returns
    -------
    Path
        The written path.
    """
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole.

    On any error the temporary folder is removed and ``path`` is left as it was.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if p.exists():
        old = p.with_name(f".{p.name}.old-{os.getpid()}")
        os.replace(p, old)
    os.replace(tmp, p)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())
