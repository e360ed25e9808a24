"""How the project's commands end (``python -m loops``, ``python -m metrics``): exit statuses and their one line.

* A failure: one ``error: ...`` line on stderr, exit status 2 (argparse's, for a bad command line, too);
  ``--debug`` shows the traceback instead (exit status 1, Python's own).
* Ctrl-C, at any moment, start-up imports included (:func:`quiet_interrupt` around the course modules' imports):
  one line, exit status 130 (the shell's 128 + SIGINT), no traceback.

Only the standard library, so ``python -m metrics`` stays fast and this module can guard the imports themselves.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Callable, Sequence

FAILED = 2  # a command that could not do its job: broken input, a bad setting (argparse's status too)
INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports a command it interrupted


def describe(err: BaseException, expected: tuple[type, ...]) -> str:
    """The text after ``error:``: an expected failure's own message (it names the file and what to do);
    anything else with its type, a bug most likely, and how to see where it came from."""
    if isinstance(err, expected):
        return str(err)
    return f"{type(err).__name__}: {err} (run again with --debug for the traceback)"


def mark_reported(err: KeyboardInterrupt) -> None:
    """Note on a Ctrl-C that what it interrupted has said so already (``fit``: how to resume)."""
    err.reported = True


def interrupted(err: KeyboardInterrupt | None = None) -> int:
    """Say, in one line unless the interrupted work has said more already, that a command was interrupted."""
    if not getattr(err, "reported", False):
        print("interrupted (Ctrl-C)", file=sys.stderr, flush=True)
    return INTERRUPTED


def run(command: Callable[[list[str]], int], argv: Sequence[str] | None,
        describe_error: Callable[[Exception], str]) -> int:
    """``command(argv)`` as a command line runs it: its exit status, or one ``error:`` line and :data:`FAILED`
    (``--debug`` in ``argv``: the traceback instead), or :func:`interrupted` on Ctrl-C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return command(argv)
    except KeyboardInterrupt as err:
        return interrupted(err)
    except Exception as err:  # one line for the user; the traceback with --debug
        if "--debug" in argv:
            raise
        print(f"error: {describe_error(err)}", file=sys.stderr)
        return FAILED


class quiet_interrupt:
    """Around the imports of a course module that is also a command (``loops``, ``metrics``): Ctrl-C while they
    load (torch takes seconds) ends the command with one line instead of a traceback. Imported as a module,
    nothing changes.

    The Ctrl-C is noted by a signal handler of its own, not only recognised as a ``KeyboardInterrupt``: a library
    interrupted inside its C code may turn it into another error (numpy's start-up raises an ``ImportError``
    "PyCapsule_Import could not import module datetime"), or swallow it and go on.
    """

    def __init__(self, module_name: str):
        self.active, self.pressed, self.previous = module_name == "__main__", False, None

    def _pressed(self, signum, frame) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def __enter__(self) -> "quiet_interrupt":
        if self.active:
            self.previous = signal.signal(signal.SIGINT, self._pressed)
        return self

    def __exit__(self, kind, err, traceback) -> bool:
        if not self.active:
            return False
        signal.signal(signal.SIGINT, self.previous)
        if self.pressed or isinstance(err, KeyboardInterrupt):
            print("interrupted (Ctrl-C) while starting; nothing was done", file=sys.stderr, flush=True)
            sys.stdout.flush()
            # Not sys.exit: when the Ctrl-C landed in Python code that a C extension runs (pybind11's exec, as torch
            # imports), CPython remembers an "unhandled" KeyboardInterrupt and kills itself with SIGINT after a clean
            # exit; nothing is open or half-written this early, so leaving at once is safe.
            os._exit(INTERRUPTED)
        return False
