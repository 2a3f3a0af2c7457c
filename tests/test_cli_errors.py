"""Every input a user can get wrong, through the real ``voxbus`` command (a subprocess): one line
on stderr, ``voxbus <command>: <message>``, no traceback, exit status 2, and soon; and servers
that cannot be reached are said within 5 s and retried, with a line every few seconds.

The rule's owner is ``voxbus.errors`` (``UserError``), printed by ``voxbus.cli.main``."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from voxbus.errors import EXIT_STATUS
from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime.procs import free_port

#: Seconds a bad input may take to be said (the command's imports included: the STT's take
#: about a second on two shared cores).
FAST_FAIL_S = 10.0
#: The same after connecting to a server and trying to load a model file.
LOAD_FAIL_S = 30.0
#: The first line about servers that cannot be reached comes within this long.
UNREACHABLE_SAID_S = 5.0

#: Variables of these prefixes in the test's environment are not passed on: each case sets
#: what it means to.
_OURS = ("VOXBUS_", "NATS_", "STT_", "LLM_", "TTS_", "BRIDGE_", "LIVEKIT_")
BRIDGE_KEYS = {"BRIDGE_API_KEY": "devkey",
               "BRIDGE_API_SECRET": "voxbus-dev-secret-at-least-32-chars-long"}


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_OURS) or k == "VOXBUS_TEST_TIER"}  # the fast tier's guard
    return {**env, **extra}


@dataclass(frozen=True)
class Run:
    rc: int
    stdout: str
    stderr: str
    took_s: float

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def voxbus(*args: str, env: dict[str, str], timeout_s: float = LOAD_FAIL_S,
           argv0: list[str] | None = None) -> Run:
    started = time.monotonic()
    proc = subprocess.run([*(argv0 or [sys.executable, "-m", "voxbus.cli"]), *args],
                          env=_env(env), capture_output=True, text=True, timeout=timeout_s)
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def assert_one_line(run: Run, command: str, says: str, *, within_s: float = FAST_FAIL_S) -> None:
    """One non-empty line on stderr, ``voxbus <command>: ...`` containing ``says``; no
    traceback anywhere; the exit status of bad input; in time."""
    shown = f"rc={run.rc} in {run.took_s:.1f} s\nstderr: {run.stderr}\nstdout: {run.stdout}"
    assert "Traceback" not in run.stderr + run.stdout, shown
    assert len(run.lines) == 1, shown
    assert run.lines[0].startswith(f"voxbus {command}: "), shown
    assert says in run.lines[0], shown
    assert run.rc == EXIT_STATUS, shown
    assert run.took_s < within_s, shown


# ---- bad input found before anything connects ---------------------------------------------

@dataclass(frozen=True)
class Case:
    command: str
    #: the environment of the case, given a directory for its files
    env: Callable[[Path], dict[str, str]]
    says: str


def _garbage(tmp: Path, name: str = "garbage.bin", content: bytes = b"not a model\n") -> str:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)


#: A port nobody listens on: every connection is refused at once (no nats-server here).
CLOSED = f"nats://127.0.0.1:{free_port()}"

CASES = {
    "llm-model-missing": Case("llm", lambda t: {"LLM_MODEL_PATH": str(t / "nowhere.gguf")},
                              "nowhere.gguf: no such file"),
    "llm-model-garbage": Case("llm", lambda t: {"LLM_MODEL_PATH": _garbage(t)},
                              "is not a GGUF model file"),
    "llm-model-directory": Case("llm", lambda t: {"LLM_MODEL_PATH": str(t)},
                                "is a directory, not a GGUF model file"),
    "stt-model-missing": Case("stt", lambda t: {"STT_MODEL": str(t / "nowhere")},
                              "nor a directory (a CTranslate2 Whisper model)"),
    "stt-model-garbage": Case("stt", lambda t: {"STT_MODEL": str(Path(_garbage(
        t, "whisper/model.bin")).parent)}, "is not a CTranslate2 model file"),
    "tts-model-missing": Case("tts", lambda t: {"TTS_ENGINE": "kokoro",
                                                "TTS_MODEL_PATH": str(t / "nowhere.onnx")},
                              "nowhere.onnx: no such file"),
    "tts-model-for-the-other-engine": Case("tts", lambda t: {"TTS_ENGINE": "piper",
                                                             "TTS_MODEL_PATH": _garbage(t)},
                                           "TTS_ENGINE is piper"),
    "credentials-missing": Case("stt", lambda t: {"VOXBUS_CREDENTIALS": str(t / "no.json")},
                                "cannot read credentials"),
    "credentials-garbage": Case("llm", lambda t: {"VOXBUS_CREDENTIALS": _garbage(t, "id.json")},
                                "are not a voxbus identity file"),
    "setting-not-a-number": Case("stt", lambda t: {"STT_CPU_THREADS": "notanumber"},
                                 "STT_CPU_THREADS='notanumber' is not an integer"),
    "setting-not-an-integer": Case("llm", lambda t: {"LLM_ENGINES": "two"},
                                   "LLM_ENGINES='two' is not an integer"),
    "setting-out-of-range": Case("tts", lambda t: {"TTS_SPEED": "9"},
                                 "TTS_SPEED must be within 0.5..2.0"),
    "log-level": Case("purger", lambda t: {"VOXBUS_LOG_LEVEL": "loud"},
                      "VOXBUS_LOG_LEVEL='loud'"),
    "nats-url-port": Case("bridge", lambda t: {"NATS_URL": "nats://127.0.0.1:99999",
                                               **BRIDGE_KEYS},
                          "the port must be within 1-65535"),
    "nats-url-scheme": Case("purger", lambda t: {"NATS_URL": "http://127.0.0.1:4222"},
                            "the scheme must be one of nats://"),
    "livekit-server-bin": Case("demo", lambda t: {"LIVEKIT_SERVER_BIN": str(t / "server")},
                               "server: no such executable file"),
}


@pytest.mark.fast
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    run = voxbus(case.command, env={"NATS_URL": CLOSED, **case.env(tmp_path)})
    assert_one_line(run, case.command, case.says)


@pytest.mark.fast
def test_a_numbers_file_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    run = voxbus("sip", str(tmp_path / "numbers.toml"), env={"NATS_URL": CLOSED, **BRIDGE_KEYS})
    assert_one_line(run, "sip", "numbers.toml: cannot read it")


@pytest.mark.fast
def test_no_livekit_server_anywhere_is_one_line() -> None:
    """Not in ``<repo>/.bin``, not on PATH, no ``LIVEKIT_SERVER_BIN``: the real command's main,
    with only the repository's location moved (this checkout has ``.bin/server``)."""
    moved = ("import sys; from pathlib import Path; import voxbus.dev.livekit_server as lk; "
             "lk.REPO = Path('/nonexistent'); from voxbus.cli import main; "
             "sys.exit(main(sys.argv[1:]))")
    run = voxbus("demo", env={"PATH": str(Path(sys.executable).parent)},
                 argv0=[sys.executable, "-c", moved])
    assert_one_line(run, "demo", "livekit-server not found")
    assert "./dev setup" in run.stderr and "--bus-only" in run.stderr


# ---- ports in use --------------------------------------------------------------------------

@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 that this test listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.mark.fast
@pytest.mark.parametrize(("command", "variable"), [("stt", "VOXBUS_HEALTH_PORT"),
                                                   ("tts", "VOXBUS_METRICS_PORT"),
                                                   ("bridge", "VOXBUS_HEALTH_PORT")])
def test_a_worker_port_in_use_is_one_line(command: str, variable: str, held_port: int) -> None:
    host = variable.replace("_PORT", "_HOST")
    run = voxbus(command, env={"NATS_URL": CLOSED, variable: str(held_port),
                               host: "127.0.0.1", **BRIDGE_KEYS})
    assert_one_line(run, command, f"{variable}={held_port}: cannot serve")


@pytest.mark.fast
def test_the_web_page_port_in_use_is_one_line(held_port: int) -> None:
    if not (Path(__file__).parents[1] / "voxbus/web/static/app.js").is_file():
        pytest.skip("the page's script is not built (./dev setup)")
    run = voxbus("web", "--port", str(held_port), env=BRIDGE_KEYS)
    assert_one_line(run, "web", f"cannot serve on 127.0.0.1:{held_port}")


def test_the_nats_port_in_use_is_one_line(held_port: int, tmp_path: Path) -> None:
    run = voxbus("nats", "--port", str(held_port), "--store", str(tmp_path), env={})
    assert_one_line(run, "nats", "address already in use")


# ---- said once the servers answer ----------------------------------------------------------

def test_a_refused_login_is_one_line(tmp_path: Path) -> None:
    """A credentials file of the right form with a password the server refuses: said at once,
    not retried for ever."""
    conf = tmp_path / "auth.conf"
    conf.write_text('authorization { users = [ {user: "stt-local", password: "right"} ] }\n')
    ident = {"user": "stt-local", "password": "wrong", "role": "stt", "region": "local",
             "inbox_prefix": "_INBOX_stt-local"}
    creds = tmp_path / "stt-local.json"
    creds.write_text(json.dumps(ident))
    server = EmbeddedNats(config_file=conf).start()
    try:
        run = voxbus("stt", env={"NATS_URL": server.url, "VOXBUS_CREDENTIALS": str(creds)})
    finally:
        server.stop()
    assert_one_line(run, "stt", "refused the login as 'stt-local' (authorization violation)")


LOADS = {
    "llm-truncated-gguf": Case("llm", lambda t: {
        "LLM_MODEL_PATH": _garbage(t, "model.gguf", b"GGUF\x03\x00\x00\x00 and then nothing")},
        "llama.cpp cannot load the model"),
    "stt-truncated-model-bin": Case("stt", lambda t: {"STT_MODEL": str(Path(_garbage(
        t, "whisper/model.bin", b"\x06\x00\x00\x00 and then nothing")).parent)},
        "CTranslate2 cannot load the Whisper model"),
    "tts-not-onnx": Case("tts", lambda t: {"TTS_ENGINE": "kokoro",
                                           "TTS_MODEL_PATH": _garbage(t, "model.onnx")},
                         "onnxruntime cannot load"),
    "stt-language-of-an-english-model": Case("stt", lambda t: {"STT_LANGUAGE": "de"},
                                             "is English-only"),
}
#: Cases that load a real model (Whisper tiny.en) before the engine refuses.
_REAL_MODEL = {"stt-language-of-an-english-model"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.model]) if n in _REAL_MODEL
                                  else n for n in LOADS])
def test_a_model_its_engine_cannot_load_is_one_line(name: str, tmp_path: Path,
                                                    nats_url: str) -> None:
    """What only the engine can tell, said when the worker loads it (after connecting)."""
    case = LOADS[name]
    run = voxbus(case.command, env={"NATS_URL": nats_url, **case.env(tmp_path)})
    assert_one_line(run, case.command, case.says, within_s=LOAD_FAIL_S)


# ---- servers that cannot be reached --------------------------------------------------------

def _lines(stream: IO[str], into: queue.Queue[tuple[float, str]]) -> None:
    for line in stream:
        into.put((time.monotonic(), line))


def _default_sigint() -> None:
    """In the child before it runs: Ctrl-C as at a terminal. A process whose parent ignores
    SIGINT inherits that (pytest-xdist's workers do), and Python then never raises
    KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.fast
@pytest.mark.parametrize("command", ["stt", "llm", "tts", "bridge", "purger"])
def test_unreachable_nats_is_said_at_once_and_retried(command: str) -> None:
    """Within 5 s a line names the URL and the reason; the worker goes on trying and says so
    again a few seconds later (not at every attempt); Ctrl-C ends it without a traceback."""
    started = time.monotonic()
    said: queue.Queue[tuple[float, str]] = queue.Queue()
    seen: list[tuple[float, dict[str, object]]] = []
    with subprocess.Popen([sys.executable, "-m", "voxbus.cli", command],
                          env=_env({"NATS_URL": CLOSED, **BRIDGE_KEYS}),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=_default_sigint) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        reader = threading.Thread(target=_lines, args=(proc.stderr, said), daemon=True)
        reader.start()
        try:
            for deadline in (started + UNREACHABLE_SAID_S, started + UNREACHABLE_SAID_S + 8.0):
                at, line = said.get(timeout=max(0.0, deadline - time.monotonic()))
                assert "Traceback" not in line, line
                seen.append((at - started, json.loads(line)))
            assert proc.poll() is None, "it gave up"
        except queue.Empty:
            pytest.fail(f"voxbus {command}: only {seen} within the deadline")
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                rc = proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            reader.join(5)
        out = proc.stdout.read()
    rest = "".join(line for _, line in list(said.queue))
    (first_s, first), (second_s, second) = seen
    assert first_s < UNREACHABLE_SAID_S
    for event in (first, second):
        assert event["event"] == "nats_unreachable"
        assert event["url"] == CLOSED and event["reason"] == "connection refused"
    assert isinstance(second["attempts"], int) and second["attempts"] > 2  # it kept trying
    assert second_s - first_s > 2.0  # a line every few seconds, not one per attempt
    assert "Traceback" not in rest, rest
    assert rc == 130, rest
    assert out == ""
