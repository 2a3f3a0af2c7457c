"""Process supervision for the harness: re-running a command in its own session (and in a
private network namespace where WebRTC needs one), and child processes that are ready once they
log a given event."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from voxbus.dev import netns
from voxbus.runtime.procs import stop_process


class LoopError(RuntimeError):
    """The loop could not start or a caller could not get into its room."""


#: Set in the environment of a command started by ``run_supervised``.
SUPERVISED_ENV = "VOXBUS_SUPERVISED"


def run_supervised(module: str, argv: Sequence[str], *, want_netns: bool,
                   no_netns: bool = False) -> int | None:
    """Re-run ``python -m module argv`` as a child in a session of its own (and, with
    ``want_netns``, inside a private network namespace where root and ``unshare`` allow: WebRTC
    ignores loopback) and return its exit status; in that child, return None (go on).

    A Ctrl-C in the terminal then reaches only the parent, which passes it on to the child alone,
    so the child stops its servers and workers in order instead of all of them dying at once.
    Prints which network it runs in."""
    if os.environ.get(SUPERVISED_ENV) == "1":
        if want_netns and netns.in_private_netns():
            print("network: inside a private network namespace (lo + a veth pair; nothing "
                  "leaves it)", flush=True)
        return None
    os.environ[SUPERVISED_ENV] = "1"
    cmd = [sys.executable, "-m", module, *argv]
    if want_netns:
        reason = None if netns.in_private_netns() else (
            "--no-netns" if no_netns
            else os.environ.get(netns.ENV_UNAVAILABLE) or netns.unavailable_reason()
        )
        if reason is None:
            if not netns.in_private_netns():
                print("network: root and unshare available: re-running inside a private "
                      "network namespace", flush=True)
            return netns.run_in_netns(cmd, require=True, new_session=True)
        print(f"network: the machine's own namespace, as on a laptop ({reason})", flush=True)
    return netns.call(cmd, new_session=True)


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _open_log(path: Path | None) -> IO[str] | None:
    """A child's log file, appended to."""
    return path.open("a", encoding="utf-8") if path is not None else None


class ChildProcess:
    """``python -m <module>`` with the loop's settings in its environment; ready once it logs
    the ``ready`` event (JSON lines on stderr)."""

    def __init__(self, name: str, env: Mapping[str, str], *, echo: bool, module: str = "",
                 ready: str = "worker_started", args: Sequence[str] = (),
                 log_path: Path | None = None) -> None:
        self.name = name
        self.module = module or f"voxbus.services.{name}"
        self.args = list(args)
        self.env = dict(env)
        self.echo = echo
        self.ready_event = ready
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.started_at = 0.0
        self.ready_s = 0.0
        self.last_lines: list[str] = []
        #: When each log event was first seen, in seconds since the process started.
        self.events: dict[str, float] = {}
        self.stopping = False
        #: Where every line it logs is also written (None: only the last ones are kept).
        self.log_path = log_path
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.started_at = time.monotonic()
        preexec = _die_with_parent if sys.platform == "linux" else None
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, *self.args, env=self.env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=preexec,
        )
        self._reader = asyncio.create_task(self._read_logs(), name=f"logs-{self.name}")

    async def _read_logs(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        log = _open_log(self.log_path)
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if log is not None:
                log.write(line + "\n")
                log.flush()
            self.last_lines = [*self.last_lines[-19:], line]
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": line}
            if not isinstance(event, dict):
                event = {"event": line}
            name = str(event.get("event", ""))
            self.events.setdefault(name, time.monotonic() - self.started_at)
            if name == self.ready_event and not self.ready.is_set():
                self.ready_s = time.monotonic() - self.started_at
                self.ready.set()
                if self.echo and not self.stopping:
                    print(f"  [{self.name}] ready after {self.ready_s:.1f} s", flush=True)
                continue
            level = str(event.get("level", ""))
            loading = not self.ready.is_set() and not self.stopping and (
                "load" in name or "warm" in name or name.endswith(("_ready", "_started"))
            )
            if self.echo and (level in ("warning", "error") or loading):
                extras = {k: v for k, v in event.items()
                          if k not in ("event", "level", "timestamp", "pii", "logger")}
                print(f"  [{self.name}] {name} {extras}", flush=True)
        if log is not None:
            log.close()

    async def wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None
        waiter = asyncio.create_task(self.ready.wait())
        died = asyncio.create_task(self.proc.wait())
        await asyncio.wait({waiter, died}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        died.cancel()
        await asyncio.gather(waiter, died, return_exceptions=True)
        if not self.ready.is_set():
            rc = self.proc.returncode
            tail = "\n    ".join(self.last_lines[-5:])
            why = f"exit {rc}" if rc is not None else f"not ready in {timeout_s:.0f} s"
            raise LoopError(f"the {self.name} process did not start ({why})\n    {tail}")

    async def stop(self, timeout_s: float = 20.0) -> None:
        self.stopping = True
        await stop_process(self.proc, timeout_s)
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
