"""NATS goes away under the whole voice loop (real nats-server, one real worker per stage:
Whisper, SmolLM2, Kokoro), between two turns of a caller: frozen for 8 s, killed and restarted
on its store after 2 s, and restarted with an empty store. After each, the caller's next turn
is answered in full (the whole transcript, a reply, its audio heard once) and the report says
how much longer the caller waited than for the turn before the outage."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from tests.faults.stages import report
from voxbus.contracts import streams
from voxbus.contracts.messages import AudioOut
from voxbus.contracts.subjects import Kind
from voxbus.dev.callers import BusCaller
from voxbus.dev.loop import VoiceLoop
from voxbus.dev.probes import TurnResult
from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import wait_until
from voxbus.services.stt.normalize import word_errors

pytestmark = pytest.mark.model

REGION = "outage"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "speech"


def _sentences() -> list[tuple[Path, float, str]]:
    items = json.loads((FIXTURES / "manifest.json").read_text())["items"]
    return [(FIXTURES / it["file"], float(it["speech_end_ms"]), it["text"]) for it in items]


class Heard:
    """The agent's audio for the session as the bridge takes it (``bridge.session``): per turn,
    a frame numbered below the next expected one is a copy of a redone reply and is dropped, so
    the caller hears each frame once; a frame above it means frames were lost."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.next_seq: dict[int, int] = {}
        self.copies = 0  # published again (after a server crash), dropped by the listener
        self.lost = 0

    async def on(self, m: Msg) -> None:
        msg = await self.bus.read(m.subject, m.data)
        if not isinstance(msg, AudioOut) or msg.turn <= 0:
            return
        expected = self.next_seq.get(msg.turn, 0)
        if msg.seq < expected:
            self.copies += 1
            return
        self.lost += msg.seq - expected
        self.next_seq[msg.turn] = msg.seq + 1


def _wait(r: TurnResult) -> float:
    assert r.first_audio is not None, r.errors
    return r.first_audio - r.speech_end


async def _turn(caller: BusCaller, sentence: tuple[Path, float, str]) -> TurnResult:
    wav, end_ms, text = sentence
    r = await caller.say(wav, end_ms, timeout_s=40)
    assert not r.errors, r.errors
    assert r.reply.strip(), "no reply"
    assert word_errors(text, r.transcript) <= 1, (text, r.transcript)
    return r


async def _connected(loop: VoiceLoop, timeout_s: float = 15.0) -> None:
    bus = loop.bus
    assert bus is not None
    await wait_until(lambda: bus.nc.is_connected, timeout_s=timeout_s, step_s=0.05,
                     what="the caller reconnected")


async def _streams_back(loop: VoiceLoop, timeout_s: float = 20.0) -> float:
    """Until the workers have provisioned the streams and the STT's consumers again."""
    assert loop.bus is not None
    start = time.monotonic()
    while True:
        try:
            await loop.bus.js.consumer_info(streams.stream_of(REGION, Kind.AUDIO_IN), "stt-p0")
            return time.monotonic() - start
        except Exception:  # noqa: BLE001 - not there yet
            assert time.monotonic() - start < timeout_s, "the workers never provisioned again"
            await asyncio.sleep(0.1)


async def test_the_voice_loop_survives_nats_outages() -> None:
    loop = VoiceLoop(region=REGION, echo=False)
    await loop.start()
    try:
        assert loop.bus is not None and loop.server is not None
        server: EmbeddedNats = loop.server
        heard = Heard(loop.bus)
        await loop.bus.nc.subscribe(f"voxbus.{REGION}.outage1.audio.out", cb=heard.on)
        caller = await loop.caller("outage1")
        sentences = _sentences()
        before = await _turn(caller, sentences[0])  # warm: the wait without an outage

        async def frozen() -> None:
            assert server._proc is not None
            server._proc.send_signal(signal.SIGSTOP)
            await asyncio.sleep(8.0)
            server._proc.send_signal(signal.SIGCONT)

        async def restarted() -> None:
            server.kill()
            await asyncio.sleep(2.0)
            await asyncio.to_thread(server.start)

        async def emptied() -> None:
            server.kill()
            assert server.store_dir is not None
            shutil.rmtree(server.store_dir / "jetstream")
            await asyncio.to_thread(server.start)
            await _streams_back(loop)

        outages = [("nats frozen 8 s (voice loop)", frozen),
                   ("nats restarted after 2 s (voice loop)", restarted),
                   ("nats back with an empty store (voice loop)", emptied)]
        for i, (scenario, outage) in enumerate(outages, start=1):
            await outage()
            await _connected(loop)
            try:
                r = await _turn(caller, sentences[i % len(sentences)])
            except AssertionError:
                for stage in loop.stages:  # what each worker said last, to see where it stopped
                    print(f"--- {stage.name}", *stage.last_lines, sep="\n")
                raise
            extra = _wait(r) - _wait(before)
            # JetStream flushes consumer state in the background: after a crash the last acked
            # messages can come again, and a replica that fenced during the outage handles them
            # again (the TTS speaks the last reply again); the listener drops those copies.
            report(scenario, gap_s=max(0.0, extra), duplicates=0,
                   wait_s=round(_wait(r), 3), wait_before_s=round(_wait(before), 3),
                   frames_republished=heard.copies,
                   note="extra wait for the first turn after the outage")
            assert heard.lost == 0, f"{heard.lost} agent audio frames never published"
            # an empty store forgets the session's turns; the caller's side (``turns_heard``)
            # keeps the numbers going up, or the listener would take the new turns for old ones
            assert r.turn > before.turn, (before.turn, r.turn)
            # work resumed at once: the first turn after the outage is not much slower
            assert extra < 1.5, f"{scenario}: answered {extra:.2f} s later than before"
            before = r
        await caller.close()
    finally:
        await loop.stop()
