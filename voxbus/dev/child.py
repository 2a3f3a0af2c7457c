"""A dev server as a child process: started with its output in a log file, then polled until it
answers, or stopped with the tail of that log in one error when it exits or never answers."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from voxbus.errors import UserError
from voxbus.runtime.procs import stop_popen


class ChildFailed(RuntimeError):
    """The server exited before it answered, or did not answer in time."""


class ChildMissing(ChildFailed, UserError):
    """The server's program is not installed (one line: where it was looked for, how to get it)."""


def find_program(name: str, *candidates: Path, hint: str,
                 env: tuple[str, str | None] = ("", None)) -> Path:
    """``env``'s value (``(variable, os.environ.get(variable))``) when set: then it must be the
    one; else the first executable of ``candidates``, else ``name`` on PATH, else
    ``ChildMissing``."""
    variable, given = env
    if given:
        if Path(given).is_file() and os.access(given, os.X_OK):
            return Path(given)
        raise ChildMissing(f"{variable}={given}: no such executable file")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    if found := shutil.which(name):
        return Path(found)
    where = ", ".join(str(c) for c in candidates)
    raise ChildMissing(f"{name} not found ({where + ' nor ' if where else ''}on PATH): {hint}")


def start_child(
    argv: Sequence[str], log_path: Path, ready: Callable[[], bool], *, what: str,
    timeout_s: float = 15.0,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (stdout and stderr to ``log_path``) and return once ``ready()``."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ChildFailed(f"{what} exited ({proc.returncode}): {_tail(log_path)}")
            if ready():
                return proc
            time.sleep(0.05)
        raise ChildFailed(f"{what} did not answer within {timeout_s:g} s: {_tail(log_path)}")
    except BaseException:
        stop_popen(proc)
        raise


def _tail(log_path: Path, chars: int = 1500) -> str:
    try:
        return log_path.read_text(errors="replace")[-chars:].strip() or "(no output)"
    except OSError:
        return "(no log)"


class ChildServer:
    """A dev server as a child process with a scratch directory of its own (its config, its
    log): ``start`` (each server's) calls ``_launch``; ``stop`` ends the process and removes
    the directory; a ``with`` block does both."""

    log_path: Path | None
    _proc: subprocess.Popen[bytes] | None
    _tmp: tempfile.TemporaryDirectory[str] | None

    def start(self, timeout_s: float = 15.0) -> Self:
        raise NotImplementedError

    def _launch(self, argv: Callable[[Path], Sequence[str]], ready: Callable[[], bool], *,
                what: str, log_name: str, timeout_s: float) -> None:
        """Start ``argv(scratch directory)``, its output in ``log_name`` there unless a
        ``log_path`` was given, and wait until ``ready()``."""
        self._tmp = tempfile.TemporaryDirectory(prefix=f"voxbus-{what}-")
        scratch = Path(self._tmp.name)
        self.log_path = self.log_path or scratch / log_name
        try:
            self._proc = start_child(argv(scratch), self.log_path, ready, what=what,
                                     timeout_s=timeout_s)
        except BaseException:
            self.stop()  # the scratch directory goes with it
            raise

    def stop(self) -> None:
        stop_popen(self._proc)
        self._proc = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
