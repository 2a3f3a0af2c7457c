"""The whole voice loop on one machine: an embedded nats-server, the STT, LLM and TTS stage
workers as separate processes (as in production), and a caller that speaks a WAV into a session
in real time and times the agent's answer. Used by ``voxbus demo`` and ``voxbus bench voice``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from contracts import decode
from contracts.messages import (
    AudioIn,
    AudioOut,
    EndOfTurn,
    ErrorEvent,
    ReplyEnd,
    ReplyText,
    Transcript,
    UserStartedSpeaking,
)
from ops.nats import EmbeddedNats
from runtime.bus import Bus
from services.stt.audio import read_wav

FRAME_MS = 20
STAGES = ("stt", "llm", "tts")


class StageProcess:
    """``python -m services.<stage>`` with the bus settings in its environment."""

    def __init__(self, stage: str, env: Mapping[str, str], *, echo: bool) -> None:
        self.stage = stage
        self.env = dict(env)
        self.echo = echo
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{self.stage}", env=self.env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read_logs(), name=f"logs-{self.stage}")

    async def _read_logs(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": line}
            name = str(event.get("event", ""))
            if name == "worker_started":
                self.ready.set()
            level = str(event.get("level", ""))
            if self.echo and (level in ("warning", "error") or "load" in name or "warm" in name
                              or name == "worker_started"):
                extras = {k: v for k, v in event.items()
                          if k not in ("event", "level", "timestamp", "pii")}
                print(f"  [{self.stage}] {name} {extras}", flush=True)

    async def wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None
        waiter = asyncio.create_task(self.ready.wait())
        died = asyncio.create_task(self.proc.wait())
        done, _ = await asyncio.wait({waiter, died}, timeout=timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        died.cancel()
        if not self.ready.is_set():
            rc = self.proc.returncode
            raise RuntimeError(f"the {self.stage} worker did not start (exit {rc})")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


@dataclass
class TurnResult:
    session: str
    transcript: str = ""
    reply: str = ""
    speech_end: float = 0.0  # wall clock (time.time()) when the caller's speech ended
    final_transcript: float | None = None
    end_of_turn: float | None = None
    first_clause: float | None = None
    first_audio: float | None = None
    reply_done: float | None = None
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
        return {k: None if v is None else round(v * 1000, 1) for k, v in ms.items()}


class BusCaller:
    """Speaks WAV files into one session over the bus and listens to everything it gets back."""

    def __init__(self, bus: Bus, region: str, session: str) -> None:
        self.bus = bus
        self.region = region
        self.session = session
        self._seq = 0
        self._current: TurnResult | None = None
        self._done = asyncio.Event()

    async def _on_msg(self, m) -> None:  # type: ignore[no-untyped-def]
        r = self._current
        if r is None:
            return
        now = time.time()
        msg = decode(m.data)
        if isinstance(msg, Transcript) and msg.is_final:
            r.final_transcript = r.final_transcript or now
            r.transcript = msg.text
        elif isinstance(msg, EndOfTurn):
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
            if msg.last:
                r.reply_done = now
                self._done.set()
        elif isinstance(msg, ErrorEvent):
            r.errors.append(f"{msg.stage}:{msg.code}: {msg.message}")
        elif isinstance(msg, UserStartedSpeaking):
            pass

    async def subscribe(self) -> None:
        await self.bus.nc.subscribe(f"voxbus.{self.region}.{self.session}.>", cb=self._on_msg)

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
        self._current, self._done = result, asyncio.Event()
        start = time.monotonic()
        wall0 = time.time()
        result.speech_end = wall0 + speech_end_ms / 1000
        silence = b"\0" * step
        n = 0
        while True:
            chunk = w.pcm[n * step:(n + 1) * step] if n * step < len(w.pcm) else silence
            await self._frame(chunk.ljust(step, b"\0"), w.sample_rate_hz, w.channels)
            n += 1
            if self._done.is_set() or time.monotonic() - start > timeout_s:
                break
            await asyncio.sleep(max(0.0, start + n * FRAME_MS / 1000 - time.monotonic()))
        self._current = None
        if not self._done.is_set():
            result.errors.append(f"no complete answer within {timeout_s:.0f}s")
        return result


class VoiceLoop:
    """NATS + stage worker processes; ``caller()`` gives a session to speak into."""

    def __init__(self, *, region: str = "demo", echo: bool = True,
                 env: Mapping[str, str] | None = None) -> None:
        self.region = region
        self.echo = echo
        self.extra_env = dict(env or {})
        self.server: EmbeddedNats | None = None
        self.bus: Bus | None = None
        self.stages: list[StageProcess] = []

    async def start(self, timeout_s: float = 300.0) -> None:
        self.server = EmbeddedNats().start()
        self.bus = await Bus.connect(self.server.url, regions=[self.region], name="voice-caller")
        await self.bus.provision()
        env = {**os.environ, "NATS_URL": self.server.url, "VOXBUS_REGIONS": self.region,
               **self.extra_env}
        self.stages = [StageProcess(s, env, echo=self.echo) for s in STAGES]
        for s in self.stages:
            await s.start()
        await asyncio.gather(*(s.wait_ready(timeout_s) for s in self.stages))

    async def caller(self, session: str) -> BusCaller:
        assert self.bus is not None
        c = BusCaller(self.bus, self.region, session)
        await c.subscribe()
        return c

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.stages))
        if self.bus is not None:
            await self.bus.close()
        if self.server is not None:
            self.server.stop()
