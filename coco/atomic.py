"""Writing files so that an interruption never leaves half a file: the project's one atomic writer.

Every file the project writes that something later reads back (checkpoints, run records, splits, image
caches, predictions) goes through :func:`write_atomic`: the content goes to a temporary file in the target's
folder, is flushed to the disk, and only then renamed over the target (``os.replace`` is atomic within one
file system). A new file gets the mode the umask gives (``mkstemp``'s private 0600 is not kept: a teammate or a
grader reads ``predictions.json``); a replaced file keeps its mode; a read-only file (no write permission) is
not replaced. Ctrl-C, a crash or a full disk leave the previous version intact; the temporary file is removed
when Python can still run (an exception, Ctrl-C, SIGTERM), and :func:`remove_stale_temps` clears what a
SIGKILL or a power cut left behind.

Only the standard library is imported, so ``python -m metrics`` stays fast.
"""
from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable

TEMP_SUFFIX = ".tmp"
FULL_DISK_BYTES = 64 * 2**20  # a write that fails with less free space than this is reported as a full disk


def write_atomic(path, write: Callable) -> Path:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    Folders are created as needed. Returns ``path``. Whatever ``write`` raises propagates, with the
    temporary file removed and ``path`` untouched.
    """
    path = Path(path)
    handle, temp_name = _temp_beside(path)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_name, _mode_for(path))
        os.replace(temp_name, path)
    except BaseException as err:
        if os.path.exists(temp_name):
            os.remove(temp_name)
        free = shutil.disk_usage(path.parent).free if isinstance(err, Exception) else None  # not on Ctrl-C
        if free is not None and free < FULL_DISK_BYTES:
            # what a full disk raises depends on the writer (torch.save: "RuntimeError: [enforce fail at
            # inline_container.cc:672] . unexpected pos"): say what happened, with the file's name
            raise OSError(errno.ENOSPC, f"{path}: not written, the disk is full ({free / 2**20:.0f} MiB free); "
                                        "free some space and run again (the previous version of the file is "
                                        "intact)") from err
        raise
    return path


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process's umask, read once (reading it means setting it: done once, then restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """The permission bits ``path`` gets: an existing file's own, else those a plain ``open`` would give."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _read_only(path: Path) -> bool:
    """Whether ``path`` is an existing file that may not be written (no write bit at all: even for root, whom
    ``os.access`` lets write anything, such a file was protected on purpose)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) and (not mode & 0o222 or not os.access(path, os.W_OK))


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in ``path``'s folder (created if needed); OSError naming ``path`` if impossible."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{path} is a folder: give a file name")
    if _read_only(path):
        raise PermissionError(errno.EACCES, f"{path} is read-only: not replaced; make it writable (chmod u+w) or "
                                            "choose another file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as err:
        raise OSError(err.errno, f"{path}: cannot write there ({err.strerror or err}); choose another place") \
            from err


def check_writable(path) -> Path:
    """Make sure ``path`` can be written before long work that ends by writing it; OSError naming the path and
    the reason otherwise (a name ending in a slash, a folder in its place, a read-only file or parent)."""
    name = os.fspath(path)
    if name.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)):
        raise IsADirectoryError(errno.EISDIR, f"{name} ends with a slash, so it names a folder: give a file name "
                                              f"(e.g. {name}predictions.json)")
    path = Path(path)
    handle, probe = _temp_beside(path)
    os.close(handle)
    os.remove(probe)
    return path


def write_text(path, text: str) -> Path:
    """``text`` as UTF-8, atomically."""
    return write_atomic(path, lambda file: file.write(text.encode("utf-8")))


def write_json(path, obj, indent: int | None = 2) -> Path:
    """``obj`` as JSON (with a final newline), atomically."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def remove_stale_temps(folder, name: str | None = None) -> list[Path]:
    """Delete the temporary files that :func:`write_atomic` left in ``folder`` when it was killed mid-write
    (``.<name>.<random>.tmp``; only those of ``name`` when given); returns what was removed. Call it only
    where no other process is writing."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    prefix = f".{name}." if name else "."
    removed = []
    for entry in folder.iterdir():
        if entry.name.startswith(prefix) and entry.name.endswith(TEMP_SUFFIX) and entry.is_file():
            entry.unlink()
            removed.append(entry)
    return removed
