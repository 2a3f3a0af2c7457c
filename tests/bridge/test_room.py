"""The bridge with a real livekit-server, a real nats-server and the echo stage as the agent."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.bridge.caller import Caller, Tap, load_wav, resample, session_of, tone
from tests.conftest import REGION
from voxbus.contracts.messages import (
    AgentSpoke,
    AudioIn,
    AudioOut,
    EndOfTurn,
    ErrorEvent,
    Interrupt,
    ReplyEnd,
    ReplyText,
    SessionEnded,
    SessionStarted,
    Transcript,
    TurnResumed,
    UserStartedSpeaking,
)
from voxbus.dev.livekit_caller import LISTEN_RATE_HZ
from voxbus.dev.livekit_server import LiveKitServer
from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import stored_caller_frames
from voxbus.runtime.worker import Worker
from voxbus.services.bridge.audio import rms
from voxbus.services.bridge.bridge import Bridge
from voxbus.services.bridge.settings import BridgeSettings

pytestmark = pytest.mark.livekit

TIMINGS: dict[str, float] = {}


def caller_for(lk: LiveKitServer, room: str, **kw: object) -> Caller:
    return Caller(lk.url, lk.config.api_key, lk.config.api_secret, room, **kw)  # type: ignore[arg-type]


async def started(tap: Tap, caller: Caller) -> SessionStarted:
    """The caller's session started: its id is the keyed hash of its room, identity and sid."""
    return await tap.wait_for(SessionStarted, session=session_of(caller))


def report(name: str, **values: float) -> None:
    line = {k: round(v * 1000, 1) for k, v in values.items()}
    print(f"\nTIMING {name} (ms): {json.dumps(line)}")


async def test_echo_through_the_room(
    livekit: LiveKitServer, bridge: Bridge, echo: Worker, tap: Tap
) -> None:
    t0 = time.perf_counter()
    agent = await bridge.dispatch("echo-room")
    dispatch_s = time.perf_counter() - t0
    caller = caller_for(livekit, "echo-room")
    await caller.join()
    sess = await started(tap, caller)
    assert not sess.room and not sess.participant, "who the caller is stays off the wire"
    await asyncio.wait_for(caller.agent_track.wait(), 10)
    pcm, rate = load_wav("traffic.wav")
    assert rate == 16_000
    await caller.play(pcm[: rate * 2])  # 0.5 s silence + 1.5 s speech
    await asyncio.sleep(0.6)

    frames = tap.of(AudioIn, sess.session)
    assert len(frames) > 50
    assert all(f.sample_rate_hz == 16_000 and f.channels == 1 and len(f.pcm) == 640
               for f in frames)
    assert [f.seq for f in frames] == list(range(len(frames)))
    heard = caller.first_voice_heard()
    assert heard is not None, "the caller never heard the agent"
    assert caller.voiced_after(heard) > 50  # ~0.5 s of voiced 10 ms frames at least
    voiced_in = next(f for f in frames if rms(f.pcm) > 200)
    voiced_out = next(t for t, m in tap.timed(AudioOut) if rms(m.pcm) > 200)
    latency = heard - caller.first_voice_sent
    TIMINGS["echo_latency_s"] = latency
    report(
        "echo", dispatch=dispatch_s, agent_connect=agent.timings["connect_s"],
        caller_connect=caller.connect_s,
        caller_to_bridge=voiced_in.capture_ns / 1e9 - (
            time.time() - (time.monotonic() - caller.first_voice_sent)),
        bus_to_caller=heard - voiced_out,
        first_frame_latency=latency,
    )
    # about 0.2 s here; the bound only catches a frame held up for real (a fresh-clone run
    # under a parallel build once took 1.04 s): the latency itself is for the benchmarks
    assert latency < 2.0
    await caller.leave()
    ended = await tap.wait_for(SessionEnded, session=sess.session)
    assert ended.reason == "participant_left"


REPLY = (
    "Sure. The museum opens at nine in the morning on weekdays and at ten on weekends; "
    "tickets are sold at the entrance until one hour before closing, and the guided tours "
    "start every half hour from the main hall next to the cafe."
)


async def speak(bus: Bus, session: str, turn: int, text: str, seconds: float, *,
                speculation: int = 0, hz: float = 300.0) -> None:
    """What the LLM and TTS stages would publish: the reply text, then its audio (24 kHz, 20 ms
    frames) as fast as the bus takes it, each frame covering its share of the text."""
    await bus.publish(REGION, ReplyText(session=session, turn=turn, seq=0, text=text,
                                        char_start=0, char_end=len(text), speculation=speculation))
    await bus.publish(REGION, ReplyEnd(session=session, turn=turn, text=text,
                                       speculation=speculation))
    pcm = tone(seconds, hz=hz)
    n = len(pcm) // 480
    for i in range(n):
        await bus.publish(REGION, AudioOut(
            session=session, turn=turn, seq=i, sample_rate_hz=24_000,
            pcm=pcm[i * 480:(i + 1) * 480].tobytes(), speculation=speculation,
            text_start=i * len(text) // n, text_end=(i + 1) * len(text) // n, last=i == n - 1,
        ))


async def test_barge_in_stops_agent_audio(
    livekit: LiveKitServer, bridge: Bridge, bus: Bus, tap: Tap
) -> None:
    await bridge.dispatch("barge-room")
    caller = caller_for(livekit, "barge-room")
    await caller.join()
    sess = (await started(tap, caller)).session
    await asyncio.wait_for(caller.agent_track.wait(), 10)
    await speak(bus, sess, 1, REPLY, 5.0)
    t_first = None
    for _ in range(100):
        t_first = caller.first_voice_heard()
        if t_first:
            break
        await asyncio.sleep(0.02)
    assert t_first is not None
    await asyncio.sleep(1.5)
    t_barge = time.monotonic()
    await bus.publish(REGION, UserStartedSpeaking(session=sess, turn=2, at_ns=time.time_ns()))
    # (the reply pauses at once; words that are no backchannel make it a barge-in)
    await bus.publish(REGION, Transcript(session=sess, turn=2, seq=0, text="Wait, stop",
                                         is_final=False, speech_start_ns=time.time_ns()))
    spoke = await tap.wait_for(AgentSpoke, session=sess)
    intr = await tap.wait_for(Interrupt, session=sess)
    await asyncio.sleep(0.8)
    silent = caller.silent_since(t_barge)
    assert silent is not None, "the agent kept talking"
    stop_s = silent - t_barge
    assert intr.turn == 1 and spoke.turn == 1 and spoke.interrupted
    assert 0 < spoke.char_end < len(REPLY)
    assert spoke.text == REPLY[: spoke.char_end]
    # The caller heard about (1.5 s + the stop time) of 5 s: the text says so too.
    heard_s = silent - t_first
    assert abs(spoke.char_end / len(REPLY) * 5.0 - heard_s) < 0.3, (spoke.char_end, heard_s)
    assert caller.voiced_after(silent + 0.2) == 0
    report("barge_in", audio_stops=stop_s, heard=heard_s,
           text_vs_heard=spoke.char_end / len(REPLY) * 5.0 - heard_s,
           interrupt_on_bus=next(t for t, m in tap.timed(Interrupt)) - t_barge)
    assert stop_s < 0.6  # ~0.1-0.2 s when idle (the report has it); loose for a loaded machine
    await caller.leave()


async def test_reply_plays_to_the_end(
    livekit: LiveKitServer, bridge: Bridge, bus: Bus, tap: Tap
) -> None:
    await bridge.dispatch("full-room")
    caller = caller_for(livekit, "full-room")
    await caller.join()
    sess = (await started(tap, caller)).session
    await asyncio.wait_for(caller.agent_track.wait(), 10)
    text = "The meeting starts at ten."
    t0 = time.monotonic()
    await speak(bus, sess, 1, text, 1.0)
    spoke = await tap.wait_for(AgentSpoke, session=sess, within_s=5)
    assert not spoke.interrupted and spoke.char_end == len(text) and spoke.text == text
    assert 0.9 < time.monotonic() - t0 < 1.6
    assert not tap.of(Interrupt, sess)
    await asyncio.sleep(0.3)
    agent_captions = [c for c in caller.captions if c[0] == "voxbus-agent"]
    assert agent_captions and agent_captions[0][1] == text
    assert agent_captions[0][2].get("lk.transcription_final") == "true"
    await caller.leave()


async def test_caller_leaves_while_agent_speaks(
    livekit: LiveKitServer, bridge: Bridge, bus: Bus, tap: Tap
) -> None:
    agent = await bridge.dispatch("leave-room")
    caller = caller_for(livekit, "leave-room")
    await caller.join()
    sess = (await started(tap, caller)).session
    await speak(bus, sess, 1, REPLY, 5.0)
    await asyncio.sleep(1.0)
    await caller.leave()
    ended = await tap.wait_for(SessionEnded, session=sess)
    assert ended.reason == "participant_left"
    spoke = await tap.wait_for(AgentSpoke, session=sess)
    assert spoke.interrupted and spoke.char_end < len(REPLY)
    assert await tap.wait_for(Interrupt, session=sess)
    assert not agent.sessions and agent.playout.pending_frames() == 0
    # late frames of the gone session are not played or queued
    await speak(bus, sess, 2, "late", 0.2)
    await asyncio.sleep(0.2)
    assert agent.playout.pending_frames() == 0


@pytest.mark.parametrize(("rate", "channels"), [(48_000, 2), (8_000, 1)])
async def test_odd_caller_formats_arrive_as_16k_mono(
    livekit: LiveKitServer, bridge: Bridge, tap: Tap, rate: int, channels: int
) -> None:
    await bridge.dispatch("fmt-room")
    caller = caller_for(livekit, "fmt-room", rate=rate, channels=channels)
    await caller.join()
    sess = (await started(tap, caller)).session
    pcm, src_rate = load_wav("museum.wav")
    x = resample(pcm[: src_rate * 2], src_rate, rate)
    if channels == 2:
        x = np.stack([x, x // 2], axis=1).reshape(-1)
    await caller.play(x)
    await asyncio.sleep(0.5)
    frames = tap.of(AudioIn, sess)
    assert len(frames) > 60
    assert all(f.sample_rate_hz == 16_000 and f.channels == 1 and len(f.pcm) == 640
               for f in frames)
    voiced = [f for f in frames if rms(f.pcm) > 200]
    assert len(voiced) > 20, "speech did not come through"
    # the speech is in the speech band: most energy below 4 kHz, and real content above 200 Hz
    y = np.frombuffer(b"".join(f.pcm for f in voiced), dtype="<i2").astype(np.float64)
    spec = np.abs(np.fft.rfft(y)) ** 2
    freqs = np.fft.rfftfreq(len(y), 1 / 16_000)
    assert spec[(freqs > 200) & (freqs < 4000)].sum() > 0.8 * spec.sum()
    await caller.leave()


async def test_room_closed_mid_turn(
    livekit: LiveKitServer, bridge: Bridge, bus: Bus, tap: Tap
) -> None:
    from livekit import api

    agent = await bridge.dispatch("doomed-room")
    caller = caller_for(livekit, "doomed-room")
    await caller.join()
    sess = (await started(tap, caller)).session
    await speak(bus, sess, 1, REPLY, 5.0)
    await asyncio.sleep(0.8)
    async with api.LiveKitAPI(bridge.s.api_url, bridge.s.api_key, bridge.s.api_secret) as lk:
        await lk.room.delete_room(api.DeleteRoomRequest(room="doomed-room"))
    ended = await tap.wait_for(SessionEnded, session=sess)
    assert ended.reason == "room_closed"
    spoke = await tap.wait_for(AgentSpoke, session=sess)
    assert spoke.interrupted
    await asyncio.wait_for(agent.closed.wait(), 5)
    for _ in range(50):
        if "doomed-room" not in bridge.rooms:
            break
        await asyncio.sleep(0.05)
    assert "doomed-room" not in bridge.rooms
    await caller.leave()


async def test_auto_join(
    livekit: LiveKitServer, bus: Bus, bridge_settings: BridgeSettings, tap: Tap
) -> None:
    from dataclasses import replace

    b = Bridge(bus, replace(bridge_settings, auto_join=True, poll_s=0.2))
    await b.start()
    try:
        caller = caller_for(livekit, "walk-in")
        t0 = time.monotonic()
        await caller.join()
        sess = await started(tap, caller)
        report("auto_join", caller_joined_to_session=time.monotonic() - t0)
        assert "walk-in" in b.rooms
        await caller.leave()
        await tap.wait_for(SessionEnded, session=sess.session)
    finally:
        await b.close()


async def test_callers_over_a_room_s_or_a_region_s_limit_are_refused_with_an_event(
    livekit: LiveKitServer, bus: Bus, bridge_settings: BridgeSettings, tap: Tap
) -> None:
    """One caller a room, two a region: a second caller in a room is not heard (no session,
    a ``room_full`` event under the id their session would have had), nor is a third caller of
    the region in a room of its own (``region_full``); the callers within the limits are."""
    from dataclasses import replace

    from voxbus.contracts.messages import ErrorEvent

    b = Bridge(bus, replace(bridge_settings, max_callers_per_room=1, max_sessions=2))
    await b.start()
    callers: list[Caller] = []
    try:
        first = await b.dispatch("limit-a")
        for room, who in (("limit-a", "ana"), ("limit-a", "ben")):
            callers.append(caller_for(livekit, room, identity=who))
            await callers[-1].join()
        ana, ben = callers
        await started(tap, ana)
        refused = await tap.wait_for(ErrorEvent, session=session_of(ben))
        assert refused.code == "room_full" and refused.stage == "bridge"
        await b.dispatch("limit-b")
        callers.append(caller_for(livekit, "limit-b", identity="cy"))
        await callers[-1].join()
        await started(tap, callers[-1])
        await b.dispatch("limit-c")
        callers.append(caller_for(livekit, "limit-c", identity="dee"))
        await callers[-1].join()
        over = await tap.wait_for(ErrorEvent, session=session_of(callers[-1]))
        assert over.code == "region_full"
        assert list(first.sessions) == ["ana"] and b.callers_in(first.region) == 2
        assert not tap.of(SessionStarted, session_of(ben))
        assert not tap.of(SessionStarted, session_of(callers[-1]))
    finally:
        for c in callers:
            await c.leave()
        await b.close()


async def test_dispatch_over_nats(
    livekit: LiveKitServer, bridge: Bridge, nats_url: str, tap: Tap
) -> None:
    from voxbus.services.bridge.dispatch import request_dispatch

    t0 = time.perf_counter()
    answer = await request_dispatch("nats-room", nats_url=nats_url, region=REGION)
    report("dispatch_over_nats", roundtrip=time.perf_counter() - t0)
    assert answer.ok and answer.room == "nats-room"
    assert "nats-room" in bridge.rooms
    again = await request_dispatch("nats-room", nats_url=nats_url, region=REGION)
    assert again.ok and len(bridge.rooms) == 1


async def test_stale_reply_is_never_played(
    livekit: LiveKitServer, bridge: Bridge, bus: Bus, tap: Tap
) -> None:
    """The user began turn 2 before any audio of reply 1 came: reply 1 is dropped, not played."""
    await bridge.dispatch("stale-room")
    caller = caller_for(livekit, "stale-room")
    await caller.join()
    sess = (await started(tap, caller)).session
    await asyncio.wait_for(caller.agent_track.wait(), 10)
    await bus.publish(REGION, UserStartedSpeaking(session=sess, turn=2, at_ns=time.time_ns()))
    await bus.publish(REGION, Transcript(session=sess, turn=2, seq=0, text="hello there",
                                         is_final=True, speech_start_ns=time.time_ns()))
    await asyncio.sleep(0.2)
    t0 = time.monotonic()
    await speak(bus, sess, 1, REPLY, 1.0)
    spoke = await tap.wait_for(AgentSpoke, session=sess)
    intr = await tap.wait_for(Interrupt, session=sess)
    assert spoke.turn == 1 and spoke.interrupted and spoke.char_end == 0 and intr.turn == 1
    await asyncio.sleep(1.0)
    assert caller.voiced_after(t0) == 0
    users = [c for c in caller.captions if c[0] == "caller-1"]
    assert users and users[0][1] == "hello there"
    assert users[0][2].get("lk.transcription_final") == "true"
    await caller.leave()


def tone_level(pcm: bytes, hz: float, rate: int = LISTEN_RATE_HZ) -> float:
    """How much of ``pcm`` (PCM16 mono) is a ``hz`` tone: its magnitude there over the mean."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x))
    freqs = np.fft.rfftfreq(x.size, 1 / rate)
    band = spectrum[(freqs > hz - 20) & (freqs < hz + 20)]
    return float(band.max() / (spectrum.mean() + 1e-9)) if band.size else 0.0


async def test_a_speculative_reply_plays_only_once_committed(
    livekit: LiveKitServer, bridge: Bridge, bus: Bus, tap: Tap
) -> None:
    """Guess 1 (a 700 Hz reply) is voided by the user going on, guess 2 (300 Hz) is committed:
    nothing plays before the commit, the committed one plays at once, and nothing of guess 1
    is ever heard or reported as spoken."""
    await bridge.dispatch("guess-room")
    caller = caller_for(livekit, "guess-room", keep_audio=True)
    await caller.join()
    sess = (await started(tap, caller)).session
    await asyncio.wait_for(caller.agent_track.wait(), 10)
    t0 = time.monotonic()
    await speak(bus, sess, 1, "Dropped guess.", 1.0, speculation=1, hz=700.0)
    await asyncio.sleep(0.6)
    assert caller.voiced_after(t0) == 0, "a reply played before its turn was committed"
    await bus.publish(REGION, TurnResumed(session=sess, turn=1, speculation=1))
    await speak(bus, sess, 1, "Kept guess.", 1.0, speculation=2)
    await asyncio.sleep(0.4)
    assert caller.voiced_after(t0) == 0
    t_commit = time.monotonic()
    await bus.publish(REGION, EndOfTurn(session=sess, turn=1, transcript="a table for four",
                                        speech_start_ns=1, speech_end_ns=2, speculation=2))
    first = await caller.wait_voice(t_commit, 5.0)
    assert first is not None, "the committed guess never played"
    spoke = await tap.wait_for(AgentSpoke, session=sess, within_s=5)
    assert spoke.turn == 1 and not spoke.interrupted and spoke.text == "Kept guess."
    await asyncio.sleep(0.3)
    heard = caller.audio_between(t0)
    assert tone_level(heard, 300.0) > 20, "the committed reply is not what was heard"
    assert tone_level(heard, 700.0) < 3, "audio of the dropped guess was heard"
    assert not tap.of(Interrupt, sess)
    report("speculation", commit_to_first_audio=first.t - t_commit)
    assert first.t - t_commit < 1.0
    await caller.leave()


async def test_a_bus_outage_delays_caller_audio_and_drops_only_past_the_backlog(
    livekit: LiveKitServer, bridge_settings: BridgeSettings, tmp_path: Path
) -> None:
    """nats-server is down for 3 s while the caller talks. The bridge holds the caller's
    frames (a backlog of 1.5 s here) and sends them in order when the server is back: the
    stream ends up with every frame but the oldest ones past the backlog, which an
    ``audio_dropped`` error event counts; nothing is reordered or stored twice."""
    server = EmbeddedNats(store_dir=tmp_path / "js").start()
    bus = await Bus.connect(server.url, regions=[REGION], partitions=8, name="outage")
    await bus.provision()
    tap = await Tap.on_bus(bus, REGION)
    b = Bridge(bus, replace(bridge_settings, audio_backlog_s=1.5))
    await b.start()
    restarted: EmbeddedNats | None = None
    try:
        agent = await b.dispatch("outage-room")
        caller = caller_for(livekit, "outage-room")
        await caller.join()
        sess = (await started(tap, caller)).session
        pcm, rate = load_wav("meeting.wav")
        talking = asyncio.create_task(caller.play(np.concatenate([pcm, pcm])))
        await asyncio.sleep(1.5)
        server.stop()
        await asyncio.sleep(3.0)
        restarted = EmbeddedNats(port=server.port, store_dir=tmp_path / "js").start()
        err = await tap.wait_for(ErrorEvent, session=sess, within_s=10,
                                 where=lambda e: e.code == "audio_dropped")
        assert "frames dropped" in err.message
        session = agent.sessions["caller-1"]
        assert 40 < session.mic.frames_dropped < 150  # ~3 s at 50 frames/s, less the 1.5 s kept
        await talking
        await caller.leave()
        ended = await tap.wait_for(SessionEnded, session=sess)
        assert ended.reason == "participant_left"
        stored = await stored_caller_frames(bus, REGION, sess)
        assert stored == sorted(set(stored)), "frames reordered or stored twice"
        missing = set(range(stored[-1] + 1)) - set(stored)
        # every frame missing was dropped and counted; the count may also hold a few frames
        # that were stored after all (sent as the server went down, or buffered by the client
        # while it reconnected: their acknowledgements never came)
        assert len(missing) <= session.mic.frames_dropped <= len(missing) + 10, (
            len(missing), session.mic.frames_dropped)
        # a 3 s outage is 150 frames: the last 1.5 s of them were kept, and stored once back
        assert len(missing) < 110, len(missing)
        report("bus_outage", outage_dropped_frames=session.mic.frames_dropped / 1000)
    finally:
        await b.close()
        await tap.close()
        await bus.close()
        for s in (restarted, server):
            if s is not None:
                s.stop()


async def test_a_purge_stops_a_live_callers_session(
    livekit: LiveKitServer, bridge: Bridge, bus: Bus, tap: Tap
) -> None:
    """A purge while the caller is still talking: the bridge stops the session at once and
    writes nothing more for it, not even its end, though the caller's microphone goes on."""
    from voxbus.ops.purge import purge_session

    await bridge.dispatch("purge-room")
    caller = caller_for(livekit, "purge-room")
    await caller.join()
    sess = (await started(tap, caller)).session
    await asyncio.wait_for(caller.agent_track.wait(), 10)
    pcm, rate = load_wav("traffic.wav")
    talking = asyncio.create_task(caller.play(np.concatenate([pcm, pcm, pcm])))
    try:
        await asyncio.sleep(1.5)
        assert len(tap.of(AudioIn, sess)) > 20
        await purge_session(bus, REGION, sess)
        done = time.monotonic()
        await asyncio.sleep(1.5)
        late = [m for at, m in tap.got if at > done and m.session == sess]
        assert not late, f"{len(late)} messages of the purged session after the purge"
    finally:
        talking.cancel()
        await asyncio.gather(talking, return_exceptions=True)
        await caller.leave()


async def test_the_bridge_works_under_its_own_identity(
    livekit: LiveKitServer, bridge_settings: BridgeSettings, tmp_path: Path
) -> None:
    """On a server that requires ``voxbus nats --secure``'s identities: the operator dispatches
    the bridge, which runs as ``bridge-<region>`` (its own inbox prefix, answering the dispatch
    on the operator's inbox), hears the caller, plays the agent, and the server logs no
    permission violation."""
    from voxbus.contracts.control import CALLER_STATE, state_key
    from voxbus.ops.auth import Identities, server_config
    from voxbus.services.bridge.dispatch import request_dispatch

    ids = Identities.load_or_create(tmp_path / "ids", [REGION])
    (tmp_path / "auth.conf").write_text(server_config(ids))
    server = EmbeddedNats(config_file=tmp_path / "auth.conf").start()

    async def login(role: str) -> Bus:
        i = ids.get(role, REGION)
        return await Bus.connect(server.url, regions=[REGION], user=i.user, password=i.password,
                                 inbox_prefix=i.inbox_prefix, name=f"test-{role}")

    op = await login("operator")
    await op.provision()
    bus = await login("bridge")
    b = Bridge(bus, bridge_settings)
    await b.start()
    tap = await Tap.on_bus(op, REGION)
    caller = caller_for(livekit, "secure-room")
    try:
        o = ids.get("operator", REGION)
        answer = await request_dispatch("secure-room", nats_url=server.url, region=REGION,
                                        user=o.user, password=o.password,
                                        inbox_prefix=o.inbox_prefix)
        assert answer.ok, answer.error
        await caller.join()
        sess = (await started(tap, caller)).session
        await asyncio.wait_for(caller.agent_track.wait(), 10)
        pcm, rate = load_wav("traffic.wav")
        await caller.play(pcm[: rate * 2])
        assert len(tap.of(AudioIn, sess)) > 50
        kv = await op.state(REGION)
        assert b"secure-room" in ((await kv.get(state_key(sess, CALLER_STATE))).value or b"")
        await speak(op, sess, 1, "Hello there.", 1.0)  # what the stages would say
        await asyncio.sleep(1.5)
        assert caller.first_voice_heard() is not None, "the caller never heard the agent"
        await caller.leave()
        await tap.wait_for(SessionEnded, session=sess)
        violations = [line for line in server.log_file.read_text().splitlines()
                      if "Violation" in line]
        assert not violations, "\n".join(violations[:10])
    finally:
        await b.close()
        await tap.close()
        for x in (bus, op):
            await x.close()
        server.stop()
