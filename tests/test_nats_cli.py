"""``voxbus nats`` as an operator runs it: a named store that outlives it, a log file, SIGTERM
stops its nats-server too, and ``--secure`` keeps its passwords across restarts."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from voxbus.ops.auth import ROLES
from voxbus.runtime.procs import free_port


def _start(store: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxbus.cli", "nats", "--port", str(port), "--store", str(store),
         "--regions", "clitest", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("NATS_URL="):
            return proc
        assert line or proc.poll() is None, "voxbus nats exited before it was ready"
    raise AssertionError("voxbus nats never said it was ready")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[str], port: int) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    deadline = time.monotonic() + 5
    while _listening(port):  # its nats-server went with it
        assert time.monotonic() < deadline, "nats-server outlived voxbus nats"
        time.sleep(0.1)
    if proc.stdout is not None:
        proc.stdout.close()


def test_sigterm_stops_the_server_and_the_store_stays(tmp_path: Path) -> None:
    store, port = tmp_path / "nats", free_port()
    _stop(_start(store, port), port)
    assert (store / "jetstream").is_dir(), "the store went with the server"
    assert "Server is ready" in (store / "nats-server.log").read_text()
    _stop(_start(store, port), port)  # the same store again: provisioning is idempotent


def test_secure_keeps_its_passwords_across_restarts(tmp_path: Path) -> None:
    store, port = tmp_path / "nats", free_port()
    _stop(_start(store, port, "--secure"), port)
    files = sorted((store / "credentials").glob("*.json"))
    assert [f.stem for f in files] == sorted(f"{r}-clitest" for r in ROLES)
    first = {f.name: json.loads(f.read_text()) for f in files}
    assert all(f.stat().st_mode & 0o077 == 0 for f in files)
    assert first["stt-clitest.json"]["inbox_prefix"] == "_INBOX_stt-clitest"
    _stop(_start(store, port, "--secure"), port)
    assert {f.name: json.loads(f.read_text()) for f in files} == first
