"""Writing files so that an interruption never leaves half a file: the project's one atomic writer.

Every file the project writes that something later reads back (checkpoints, run records, splits, image
caches, predictions) goes through :func:`write_atomic`: the content goes to a temporary file in the target's
folder, is flushed to the disk, and only then renamed over the target (``os.replace`` is atomic within one
file system). Ctrl-C, a crash or a full disk leave the previous version intact; the temporary file is removed
when Python can still run (an exception, Ctrl-C, SIGTERM), and :func:`remove_stale_temps` clears what a
SIGKILL or a power cut left behind.

Only the standard library is imported, so ``python -m metrics`` stays fast.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

TEMP_SUFFIX = ".tmp"


def write_atomic(path, write: Callable) -> Path:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    Folders are created as needed. Returns ``path``. Whatever ``write`` raises propagates, with the
    temporary file removed and ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.remove(temp_name)
        raise
    return path


def write_text(path, text: str) -> Path:
    """``text`` as UTF-8, atomically."""
    return write_atomic(path, lambda file: file.write(text.encode("utf-8")))


def write_json(path, obj, indent: int | None = 2) -> Path:
    """``obj`` as JSON (with a final newline), atomically."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def remove_stale_temps(folder) -> list[Path]:
    """Delete the temporary files that :func:`write_atomic` left in ``folder`` when it was killed mid-write
    (``.<name>.<random>.tmp``); returns what was removed. Call it only where no other process is writing."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX) and entry.is_file():
            entry.unlink()
            removed.append(entry)
    return removed
