"""What the harness's callers measure on the bus: one session's traffic folded into a
``TurnResult`` per turn (transcript, reply, when each stage's first output appeared)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

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
from voxbus.runtime.bus import Bus

#: A caller's frame louder than this (PCM16 RMS) is the agent's voice: above the decoded silence
#: of an idle track (0) and Opus noise, below the first 10 ms of a Kokoro reply.
FIRST_AUDIO_RMS = 30.0


@dataclass
class TurnResult:
    session: str
    turn: int = 0
    transcript: str = ""
    reply: str = ""
    speech_end: float = 0.0  # wall clock (time.time()) when the caller's speech ended
    final_transcript: float | None = None
    end_of_turn: float | None = None
    first_text: float | None = None
    first_audio: float | None = None  # the first AudioOut frame on the bus
    caller_first_audio: float | None = None  # the first agent audio frame the caller received
    reply_done: float | None = None
    spoken_chars: int | None = None  # AgentSpoke.char_end (room mode)
    interrupted: bool = False
    audio: bytearray = field(default_factory=bytearray)
    audio_rate_hz: int = 24000
    errors: list[str] = field(default_factory=list)
    fixture: str = ""  # the WAV the caller spoke (benchmarks)
    guesses: int = 0  # speculative EndOfTurn seen for the turn
    speculation: int = 0  # the guess the committed EndOfTurn named (0: none)
    guessed: float | None = None  # when that guess went out
    decode_ms: float | None = None  # the committed final's decode

    def since_speech_end(self, t: float | None) -> float | None:
        return None if t is None else t - self.speech_end

    def breakdown(self) -> dict[str, float | None]:
        ms = {
            "final_transcript_ms": self.since_speech_end(self.final_transcript),
            "end_of_turn_ms": self.since_speech_end(self.end_of_turn),
            "first_llm_text_ms": self.since_speech_end(self.first_text),
            "first_tts_audio_ms": self.since_speech_end(self.first_audio),
            "guess_ms": self.since_speech_end(self.guessed),
        }
        if self.caller_first_audio is not None:
            ms["caller_first_audio_ms"] = self.since_speech_end(self.caller_first_audio)
        return {k: None if v is None else round(v * 1000, 1) for k, v in ms.items()}


@dataclass
class _Prepared:
    """The parts of one reply (a turn's ``speculation``) seen before the turn was committed."""

    parts: list[tuple[float, ReplyText | ReplyEnd | AudioOut]] = field(default_factory=list)


class SessionWatch:
    """Everything published for one session, folded into the current ``TurnResult``: the
    transcript, the reply, when each stage's first output appeared on the bus. A reply prepared
    for a speculative turn counts once the committed turn names it (with the times its parts
    appeared); any other is ignored, as the bridge drops it."""

    def __init__(self, bus: Bus, region: str, session: str, *, done_on_spoken: bool) -> None:
        self.bus = bus
        self.region = region
        self.session = session
        self.done_on_spoken = done_on_spoken
        self.current: TurnResult | None = None
        self.done = asyncio.Event()
        self.audio_in = asyncio.Event()
        self.last_done_turn = 0
        self._prepared: dict[int, _Prepared] = {}
        self._committed: int | None = None
        self._guessed: dict[int, float] = {}  # speculation -> when its EndOfTurn was seen
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
        self._prepared, self._committed, self._guessed = {}, None, {}

    def end(self) -> None:
        if self.current is not None and self.current.turn:
            self.last_done_turn = max(self.last_done_turn, self.current.turn)
        self.current = None

    async def _on_msg(self, m: Msg) -> None:
        now = time.time()
        try:
            msg = await self.bus.read(m.subject, m.data)
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
        elif isinstance(msg, EndOfTurn) and msg.speculative:
            r.guesses += 1
            self._guessed[msg.speculation] = now
        elif isinstance(msg, EndOfTurn):
            if not msg.transcript.strip():
                return  # noise: no reply follows
            r.turn = r.turn or msg.turn
            r.end_of_turn = r.end_of_turn or now
            r.transcript = msg.transcript
            r.speculation = self._committed = msg.speculation
            r.guessed = self._guessed.get(msg.speculation) if msg.speculation else None
            r.decode_ms = msg.decode_ms
            self._guessed.clear()
            prepared = self._prepared.pop(msg.speculation, _Prepared())
            self._prepared.clear()
            for at, part in prepared.parts:
                self._reply_part(r, part, at)
        elif isinstance(msg, ReplyText | ReplyEnd | AudioOut):
            if self._committed is None:
                self._prepared.setdefault(msg.speculation, _Prepared()).parts.append((now, msg))
            elif msg.speculation == self._committed:
                self._reply_part(r, msg, now)
        elif isinstance(msg, AgentSpoke):
            r.spoken_chars = msg.char_end
            r.interrupted = msg.interrupted
            r.reply_done = now
            self.done.set()
        elif isinstance(msg, ErrorEvent):
            r.errors.append(f"{msg.stage}:{msg.code}: {msg.message}")

    def _reply_part(self, r: TurnResult, msg: ReplyText | ReplyEnd | AudioOut,
                    now: float) -> None:
        if isinstance(msg, ReplyText):
            r.first_text = r.first_text or now
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
