"""The whole voice loop on one machine: an embedded nats-server, the STT, LLM and TTS stage
workers as separate processes (as in production) and, with ``livekit=True``, a livekit-server
(loopback config) and the LiveKit bridge process too. Callers speak WAVs and time the answer:

- ``BusCaller``: speaks into a session over the bus (no LiveKit) and listens on the bus;
- ``RoomCaller``: a participant in a LiveKit room (``services.bridge.caller.Caller``) with a
  microphone; it hears the agent in the room, and watches its session on the bus for the
  per-stage times.

Used by ``voxbus demo`` and ``voxbus bench voice``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voxbus.contracts import decode
from voxbus.contracts.messages import (
    AgentSpoke,
    AudioIn,
    AudioOut,
    EndOfTurn,
    ErrorEvent,
    ReplyEnd,
    ReplyText,
    Transcript,
)
from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime.bus import Bus
from voxbus.runtime.procs import stop_process
from voxbus.services.bridge import netns
from voxbus.services.bridge.audio import convert
from voxbus.services.bridge.caller import LISTEN_RATE_HZ, Caller
from voxbus.services.bridge.server import LiveKitServer
from voxbus.services.stt.audio import read_wav

FRAME_MS = 20
STAGES = ("stt", "llm", "tts")
#: A caller's frame louder than this (PCM16 RMS) is the agent's voice: above the decoded silence
#: of an idle track (0) and Opus noise, below the first 10 ms of a Kokoro reply.
FIRST_AUDIO_RMS = 30.0


#: Set in the environment of a command started by ``run_supervised``.
SUPERVISED_ENV = "VOXBUS_SUPERVISED"


class LoopError(RuntimeError):
    """The loop could not start or a caller could not get into its room."""


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


class ChildProcess:
    """``python -m <module>`` with the loop's settings in its environment; ready once it logs
    the ``ready`` event (JSON lines on stderr)."""

    def __init__(self, name: str, env: Mapping[str, str], *, echo: bool, module: str = "",
                 ready: str = "worker_started", args: Sequence[str] = ()) -> None:
        self.name = name
        self.module = module or f"services.{name}"
        self.args = list(args)
        self.env = dict(env)
        self.echo = echo
        self.ready_event = ready
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.started_at = 0.0
        self.ready_s = 0.0
        self.last_lines: list[str] = []
        self.stopping = False
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
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.last_lines = [*self.last_lines[-19:], line]
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": line}
            if not isinstance(event, dict):
                event = {"event": line}
            name = str(event.get("event", ""))
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


#: The old name (a stage worker is one kind of child process).
StageProcess = ChildProcess


@dataclass
class TurnResult:
    session: str
    turn: int = 0
    transcript: str = ""
    reply: str = ""
    speech_end: float = 0.0  # wall clock (time.time()) when the caller's speech ended
    final_transcript: float | None = None
    end_of_turn: float | None = None
    first_clause: float | None = None
    first_audio: float | None = None  # the first AudioOut frame on the bus
    caller_first_audio: float | None = None  # the first agent audio frame the caller received
    reply_done: float | None = None
    spoken_chars: int | None = None  # AgentSpoke.char_end (room mode)
    interrupted: bool = False
    audio: bytearray = field(default_factory=bytearray)
    audio_rate_hz: int = 24000
    errors: list[str] = field(default_factory=list)

    def since_speech_end(self, t: float | None) -> float | None:
        return None if t is None else t - self.speech_end

    def breakdown(self) -> dict[str, float | None]:
        ms = {
            "final_transcript_ms": self.since_speech_end(self.final_transcript),
            "end_of_turn_ms": self.since_speech_end(self.end_of_turn),
            "first_llm_clause_ms": self.since_speech_end(self.first_clause),
            "first_tts_audio_ms": self.since_speech_end(self.first_audio),
        }
        if self.caller_first_audio is not None:
            ms["caller_first_audio_ms"] = self.since_speech_end(self.caller_first_audio)
        return {k: None if v is None else round(v * 1000, 1) for k, v in ms.items()}


class SessionWatch:
    """Everything published for one session, folded into the current ``TurnResult``: the
    transcript, the reply, when each stage's first output appeared on the bus."""

    def __init__(self, bus: Bus, region: str, session: str, *, done_on_spoken: bool) -> None:
        self.bus = bus
        self.region = region
        self.session = session
        self.done_on_spoken = done_on_spoken
        self.current: TurnResult | None = None
        self.done = asyncio.Event()
        self.audio_in = asyncio.Event()
        self.last_done_turn = 0
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.bus.nc.subscribe(f"voxbus.{self.region}.{self.session}.>",
                                                cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    def begin(self, result: TurnResult) -> None:
        self.current, self.done = result, asyncio.Event()

    def end(self) -> None:
        if self.current is not None and self.current.turn:
            self.last_done_turn = max(self.last_done_turn, self.current.turn)
        self.current = None

    async def _on_msg(self, m: Msg) -> None:
        now = time.time()
        try:
            msg = decode(m.data)
        except Exception:  # noqa: BLE001 - not ours to judge here
            return
        if isinstance(msg, AudioIn):
            self.audio_in.set()
            return
        r = self.current
        if r is None or (0 < msg.turn <= self.last_done_turn):
            return
        if r.turn and msg.turn and msg.turn != r.turn:
            return
        if isinstance(msg, Transcript) and msg.is_final:
            if not msg.text.strip():
                return
            r.turn = r.turn or msg.turn
            r.final_transcript = r.final_transcript or now
            r.transcript = msg.text
        elif isinstance(msg, EndOfTurn):
            if not msg.transcript.strip():
                return  # noise: no reply follows
            r.turn = r.turn or msg.turn
            r.end_of_turn = r.end_of_turn or now
            r.transcript = msg.transcript
        elif isinstance(msg, ReplyText):
            r.first_clause = r.first_clause or now
        elif isinstance(msg, ReplyEnd):
            r.reply = msg.text
        elif isinstance(msg, AudioOut):
            if msg.pcm:
                r.first_audio = r.first_audio or now
                r.audio += msg.pcm
                r.audio_rate_hz = msg.sample_rate_hz
            if msg.last and not self.done_on_spoken:
                r.reply_done = now
                self.done.set()
        elif isinstance(msg, AgentSpoke):
            r.spoken_chars = msg.char_end
            r.interrupted = msg.interrupted
            r.reply_done = now
            self.done.set()
        elif isinstance(msg, ErrorEvent):
            r.errors.append(f"{msg.stage}:{msg.code}: {msg.message}")


class BusCaller:
    """Speaks WAV files into one session over the bus and listens to everything it gets back."""

    def __init__(self, bus: Bus, region: str, session: str) -> None:
        self.bus = bus
        self.region = region
        self.session = session
        self._seq = 0
        self.watch = SessionWatch(bus, region, session, done_on_spoken=False)

    async def subscribe(self) -> None:
        await self.watch.start()

    async def _frame(self, pcm: bytes, rate: int, channels: int) -> None:
        await self.bus.publish(self.region, AudioIn(
            session=self.session, seq=self._seq, sample_rate_hz=rate, channels=channels,
            capture_ns=time.time_ns(), pcm=pcm, participant="caller"))
        self._seq += 1

    async def say(self, wav: Path, speech_end_ms: float, *, timeout_s: float = 30.0) -> TurnResult:
        """Speak ``wav`` in real time, then keep sending silence until the answer is complete."""
        w = read_wav(wav)
        step = w.sample_rate_hz * w.channels * 2 * FRAME_MS // 1000
        result = TurnResult(session=self.session)
        self.watch.begin(result)
        start = time.monotonic()
        wall0 = time.time()
        result.speech_end = wall0 + speech_end_ms / 1000
        silence = b"\0" * step
        n = 0
        while True:
            chunk = w.pcm[n * step:(n + 1) * step] if n * step < len(w.pcm) else silence
            await self._frame(chunk.ljust(step, b"\0"), w.sample_rate_hz, w.channels)
            n += 1
            if self.watch.done.is_set() or time.monotonic() - start > timeout_s:
                break
            await asyncio.sleep(max(0.0, start + n * FRAME_MS / 1000 - time.monotonic()))
        self.watch.end()
        if not self.watch.done.is_set():
            result.errors.append(f"no complete answer within {timeout_s:.0f}s")
        return result

    async def close(self) -> None:
        await self.watch.stop()


def wav_pcm(wav: Path, rate: int) -> np.ndarray:
    """A WAV as mono PCM16 at ``rate``."""
    w = read_wav(wav)
    pcm = convert(w.pcm, rate=w.sample_rate_hz, channels=w.channels, out_rate=rate)
    return np.frombuffer(pcm, dtype="<i2").copy()


class RoomCaller:
    """A caller in a LiveKit room with the agent: speaks WAVs through a live microphone, hears
    the answer in the room, and reads its session's bus traffic for the per-stage times."""

    def __init__(self, caller: Caller, bus: Bus, region: str, session: str) -> None:
        self.caller = caller
        self.session = session
        self.watch = SessionWatch(bus, region, session, done_on_spoken=True)

    @classmethod
    async def connect(cls, loop: VoiceLoop, room: str, identity: str = "caller",
                      *, timeout_s: float = 20.0) -> RoomCaller:
        from voxbus.services.bridge.dispatch import request_dispatch
        from voxbus.services.bridge.session import session_id_for

        lk, bus, server = loop.livekit, loop.bus, loop.server
        if lk is None or bus is None or server is None:
            raise LoopError("the loop runs without LiveKit (VoiceLoop(livekit=True))")
        answer = await request_dispatch(room, nats_url=server.url, region=loop.region,
                                        timeout_s=timeout_s)
        if not answer.get("ok"):
            raise LoopError(f"the bridge did not join room {room!r}: {answer.get('error')}")
        caller = Caller(lk.url, lk.config.api_key, lk.config.api_secret, room,
                        identity=identity)
        try:
            await caller.join(timeout_s=timeout_s)
        except Exception as e:
            await caller.leave()
            raise LoopError(f"the caller could not join room {room!r}: {e!r}") from e
        session = session_id_for(room, identity, caller.room.local_participant.sid)
        rc = cls(caller, bus, loop.region, session)
        await rc.watch.start()
        caller.start_mic()
        try:
            async with asyncio.timeout(timeout_s):
                await caller.agent_track.wait()
                await caller.mic_subscribed.wait()
                await rc.watch.audio_in.wait()  # the bridge hears us: the session is up
        except TimeoutError:
            await rc.close()
            raise LoopError(
                f"room {room!r}: no agent track, or the bridge never heard the caller "
                f"(agent track: {caller.agent_track.is_set()}, "
                f"subscribed: {caller.mic_subscribed.is_set()})"
            ) from None
        return rc

    async def say(self, wav: Path | np.ndarray, speech_end_ms: float, *,
                  timeout_s: float = 30.0, tail_s: float = 0.3) -> TurnResult:
        """Speak ``wav`` (a file, or PCM16 at the caller's rate) and wait until the agent has
        finished its answer (the bridge's ``AgentSpoke``) or ``timeout_s`` after the end of the
        speech. The result has the bus times and the first agent frame the caller heard; its
        ``audio`` is what the caller heard of the answer."""
        pcm = wav_pcm(wav, self.caller.rate) if isinstance(wav, Path) else wav
        result = TurnResult(session=self.session, audio_rate_hz=LISTEN_RATE_HZ)
        self.watch.begin(result)
        try:
            spoken = await self.caller.say(pcm)
            end_mono = spoken.at(speech_end_ms / 1000)
            result.speech_end = spoken.wall_at(speech_end_ms / 1000)
            left = end_mono + timeout_s - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.watch.done.wait(), max(0.0, left))
            if not self.watch.done.is_set():
                result.errors.append(f"no complete answer within {timeout_s:.0f}s")
            await asyncio.sleep(tail_s)  # the last frames are still on their way
        finally:
            self.watch.end()
        first = self.caller.first_frame_heard(end_mono, threshold=FIRST_AUDIO_RMS)
        if first is not None:
            result.caller_first_audio = first.wall
            result.audio = bytearray(self.caller.audio_between(first.t - 0.02))
        else:
            result.audio = bytearray()
        return result

    async def close(self) -> None:
        await self.watch.stop()
        await self.caller.leave()


class VoiceLoop:
    """NATS + stage worker processes (+ livekit-server and the bridge with ``livekit``);
    ``caller()`` gives a bus session to speak into, ``room_caller()`` a caller in a room."""

    def __init__(self, *, region: str = "demo", echo: bool = True, livekit: bool = False,
                 env: Mapping[str, str] | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.region = region
        self.echo = echo
        self.with_livekit = livekit
        self.extra_env = dict(env or {})
        self.progress = progress or ((lambda s: print(s, flush=True)) if echo else lambda s: None)
        self.server: EmbeddedNats | None = None
        self.bus: Bus | None = None
        self.livekit: LiveKitServer | None = None
        self.stages: list[ChildProcess] = []
        self.bridge: ChildProcess | None = None

    async def start(self, timeout_s: float = 300.0) -> None:
        self.server = await asyncio.to_thread(EmbeddedNats().start)
        self.bus = await Bus.connect(self.server.url, regions=[self.region], name="voice-caller")
        await self.bus.provision()
        self.progress(f"  [nats] ready at {self.server.url}")
        env = {**os.environ, "NATS_URL": self.server.url, "VOXBUS_REGIONS": self.region,
               **self.extra_env}
        self.stages = [ChildProcess(s, env, echo=self.echo) for s in STAGES]
        for s in self.stages:
            await s.start()
        if self.with_livekit:
            lk = LiveKitServer.local(node_ip=netns.node_ip())
            await asyncio.to_thread(lk.start)
            self.livekit = lk
            self.progress(f"  [livekit] ready at {lk.url} in {lk.started_s:.1f} s "
                          f"(RTC on {lk.config.node_ip}:{lk.config.udp_port}/udp)")
            bridge_env = {
                **env, "BRIDGE_LIVEKIT_URL": lk.url, "BRIDGE_API_KEY": lk.config.api_key,
                "BRIDGE_API_SECRET": lk.config.api_secret, "BRIDGE_REGION": self.region,
            }
            self.bridge = ChildProcess("bridge", bridge_env, echo=self.echo,
                                       ready="bridge_started")
            await self.bridge.start()
        procs = [*self.stages, *([self.bridge] if self.bridge else [])]
        await asyncio.gather(*(p.wait_ready(timeout_s) for p in procs))

    async def caller(self, session: str) -> BusCaller:
        assert self.bus is not None
        c = BusCaller(self.bus, self.region, session)
        await c.subscribe()
        return c

    async def room_caller(self, room: str, identity: str = "caller") -> RoomCaller:
        return await RoomCaller.connect(self, room, identity)

    async def stop(self) -> None:
        if self.bridge is not None:
            await self.bridge.stop()
        await asyncio.gather(*(s.stop() for s in self.stages))
        if self.livekit is not None:
            await asyncio.to_thread(self.livekit.stop)
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.close()
        if self.server is not None:
            self.server.stop()
