"""A real SIP phone for tests and the phone demo: Debian's ``baresip``, driven over its
``ctrl_tcp`` socket (JSON in netstrings), playing a WAV file as its microphone and recording what
it hears (``sndfile``: ``dump-<peer>-dec.wav``).

    async with SipPhone(tmp=dir) as phone:
        await phone.dial("sip:+15550100@10.77.0.1:5060")
        await phone.wait("CALL_ESTABLISHED")
        await phone.say(question_8k)
        ...
        heard = phone.heard()   # PCM16 mono, 8 kHz

Events (``CALL_RINGING``, ``CALL_ESTABLISHED``, ``CALL_CLOSED`` with the reason in ``param``,
``TRANSFER`` for a REFER...) are kept in ``events``, in order. ``./dev setup`` installs
baresip-core.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from voxbus.dev.child import find_program
from voxbus.runtime.procs import free_port, stop_process

Pcm16 = npt.NDArray[np.int16]
#: G.711's rate: the microphone file and the recording are at it.
PHONE_RATE_HZ: Final = 8000
_CONFIG: Final = """\
sip_listen {address}
ctrl_tcp_listen 127.0.0.1:{ctrl_port}
audio_source aufile,{wav}
audio_player aufile,{tmp}/player.wav
audio_alert aufile,{tmp}/alert.wav
ausrc_srate {rate}
auplay_srate {rate}
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
module sndfile.so
module_app account.so
module_app menu.so
module_app ctrl_tcp.so
snd_path {tmp}
"""


@dataclass(frozen=True)
class PhoneEvent:
    type: str
    param: str = ""
    peer: str = ""
    t: float = 0.0  # monotonic


def write_wav_8k(path: Path, pcm: Pcm16) -> Path:
    """``pcm`` (mono PCM16 at 8 kHz) as a WAV file the phone can play."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(PHONE_RATE_HZ)
        w.writeframes(np.asarray(pcm, dtype="<i2").tobytes())
    return path


def _netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


@dataclass
class SipPhone:
    """A phone whose microphone is silent until ``say``; ``tmp`` keeps its config, log and
    recordings."""

    tmp: Path
    #: The address the phone listens on (the veth's far end inside the namespace).
    address: str = "127.0.0.1"
    #: ``auto``: incoming calls are answered at once (for dial-out tests); ``manual``: they ring.
    answer: str = "manual"
    #: Its SIP port (0: a free one).
    sip_port: int = 0
    #: Who it calls as (the SIP From user: a phone number, say).
    user: str = "phone"
    events: list[PhoneEvent] = field(default_factory=list)
    _proc: asyncio.subprocess.Process | None = None
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None
    _read_task: asyncio.Task[None] | None = None
    _token: int = 0
    _said: int = 0
    _answers: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def uri(self) -> str:
        return f"sip:{self.user}@{self.address}:{self.sip_port}"

    async def start(self, timeout_s: float = 10.0) -> SipPhone:
        binary = find_program("baresip", hint="run ./dev setup, or install Debian's baresip-core")
        conf = self.tmp / "baresip"
        conf.mkdir(parents=True, exist_ok=True)
        self.sip_port = self.sip_port or free_port(host=self.address)
        ctrl_port = free_port()
        silence = await asyncio.to_thread(  # 10 MB: not on the event loop
            write_wav_8k, self.tmp / "silence.wav", np.zeros(PHONE_RATE_HZ * 600, np.int16))
        (conf / "config").write_text(_CONFIG.format(
            address=f"{self.address}:{self.sip_port}", ctrl_port=ctrl_port, wav=silence,
            tmp=self.tmp, rate=PHONE_RATE_HZ))
        (conf / "accounts").write_text(
            f"<{self.uri}>;regint=0;answermode={self.answer}\n")
        log = (self.tmp / "baresip.log").open("wb")
        self._proc = await asyncio.create_subprocess_exec(
            str(binary), "-f", str(conf), stdin=asyncio.subprocess.DEVNULL, stdout=log,
            stderr=asyncio.subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._reader, self._writer = await asyncio.open_connection("127.0.0.1", ctrl_port)
                break
            except OSError:
                if self._proc.returncode is not None or time.monotonic() > deadline:
                    await self.stop()
                    raise RuntimeError(f"baresip did not start: {self.log_tail()}") from None
                await asyncio.sleep(0.05)
        self._read_task = asyncio.create_task(self._read(), name="baresip-ctrl")
        return self

    def log_tail(self, chars: int = 1500) -> str:
        with contextlib.suppress(OSError):
            return (self.tmp / "baresip.log").read_text(errors="replace")[-chars:]
        return "(no log)"

    async def _read(self) -> None:
        assert self._reader is not None
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                size = int((await self._reader.readuntil(b":"))[:-1])
                body = await self._reader.readexactly(size + 1)
                msg = json.loads(body[:-1])
                if msg.get("response"):
                    fut = self._answers.pop(str(msg.get("token", "")), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif msg.get("event"):
                    self.events.append(PhoneEvent(
                        type=str(msg.get("type", "")), param=str(msg.get("param", "")),
                        peer=str(msg.get("peeruri", "")), t=time.monotonic()))
                    self._changed.set()

    async def command(self, command: str, params: str = "", timeout_s: float = 5.0) -> str:
        """Run a baresip command (``dial``, ``hangup``, ``sndcode``...); its answer's text."""
        assert self._writer is not None, "start() first"
        self._token += 1
        token = str(self._token)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers[token] = fut
        self._writer.write(_netstring(json.dumps(
            {"command": command, "params": params, "token": token}).encode()))
        await self._writer.drain()
        answer = await asyncio.wait_for(fut, timeout_s)
        if not answer.get("ok"):
            raise RuntimeError(f"baresip {command} {params}: {answer.get('data')}")
        return str(answer.get("data", ""))

    async def say(self, pcm: Pcm16, *, then_silence_s: float = 120.0) -> None:
        """Speak ``pcm`` (mono PCM16 at 8 kHz) now, then silence (baresip hangs up when its
        microphone file ends)."""
        self._said += 1
        audio = np.concatenate([np.asarray(pcm, np.int16),
                                np.zeros(int(PHONE_RATE_HZ * then_silence_s), np.int16)])
        path = await asyncio.to_thread(write_wav_8k, self.tmp / f"say-{self._said}.wav", audio)
        await self.command("ausrc", f"aufile,{path}")

    async def dial(self, uri: str) -> None:
        await self.command("dial", uri)

    async def hangup(self) -> None:
        await self.command("hangup")

    async def send_digits(self, digits: str) -> None:
        """DTMF (RFC 4733 telephone events), one digit at a time."""
        for d in digits:
            await self.command("sndcode", d)
            await asyncio.sleep(0.25)

    async def wait(self, event: str, timeout_s: float = 20.0) -> PhoneEvent:
        """The first event of type ``event`` (one seen already counts)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for e in self.events:
                if e.type == event:
                    return e
            left = deadline - time.monotonic()
            if left <= 0:
                seen = [(e.type, e.param) for e in self.events]
                raise TimeoutError(f"no {event} within {timeout_s:g} s; events: {seen}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def heard(self, call: int = -1) -> Pcm16:
        """What the phone heard (mono PCM16 at 8 kHz) in a call (by default its last; 0: its
        first), up to now."""
        return self._recording("dec", call)

    def sent(self, call: int = -1) -> Pcm16:
        """What the phone sent in a call, on the same clock as ``heard``: both recordings start
        with the call's audio."""
        return self._recording("enc", call)

    def _recording(self, kind: str, call: int) -> Pcm16:
        """Read past the WAV header, whose sizes are written only when the call ends. (baresip
        names its recordings by the second a call's audio started.)"""
        dumps = sorted(self.tmp.glob(f"dump-*-{kind}.wav"))
        if not dumps:
            return np.zeros(0, dtype=np.int16)
        raw = dumps[call].read_bytes()
        at = raw.find(b"data")
        body = raw[at + 8:] if at >= 0 else b""
        return np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2").copy()

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._read_task
            self._read_task = None
        await stop_process(self._proc, timeout_s=5.0)
        self._proc = None

    async def __aenter__(self) -> SipPhone:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
