"""Phone calls on real parts: Debian's baresip dials a real livekit-sip, which puts the call into
a room on a real livekit-server (the two share a real Redis); the bridge joins the room and the
real STT, LLM and TTS stages answer. Runs inside the private network namespace, like the other
LiveKit tests (the phone listens on the veth's far end)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog.testing
from livekit import api

from tests.bridge.caller import Tap
from tests.bridge.test_voice_loop import (  # noqa: F401 - module fixtures
    MAX_WER,
    MIN_OVERLAP,
    Agent,
    agent_factory,
    kokoro,
    speech,
    start_agent,
    wer,
    whisper,
)
from tests.conftest import REGION
from voxbus.agents import Agent as VoxAgent
from voxbus.agents.registry import AgentRegistry
from voxbus.audio import float32_to_pcm16, pcm16_to_float32, resample
from voxbus.contracts.control import CallRequest
from voxbus.contracts.messages import (
    AgentSpoke,
    AudioOut,
    EndOfTurn,
    ErrorEvent,
    ReplyEnd,
    SessionEnded,
    SessionStarted,
)
from voxbus.contracts.streams import agents_bucket, ops_stream
from voxbus.dev import netns
from voxbus.dev.livekit_server import LiveKitServer
from voxbus.dev.redis_server import RedisServer
from voxbus.dev.sip_phone import PHONE_RATE_HZ, SipPhone
from voxbus.dev.sip_server import SipServer
from voxbus.ops.call import describe
from voxbus.ops.purge import purge_session
from voxbus.ops.sip import PhoneNumber, SipConfig, provision
from voxbus.runtime.bus import Bus
from voxbus.services.bridge.bridge import Bridge
from voxbus.services.bridge.dial import place_call
from voxbus.services.bridge.settings import BridgeSettings
from voxbus.services.llm.engine import ToolCallDelta
from voxbus.services.llm.fake import FakeLLM, FakeTurn
from voxbus.services.llm.settings import DEFAULT_SYSTEM_PROMPT
from voxbus.services.stt.engine import WhisperEngine
from voxbus.services.stt.normalize import normalize_text
from voxbus.services.tts.engine import KokoroEngine

pytestmark = [pytest.mark.livekit, pytest.mark.model]

NUMBER = "+15550100"
DESK_NUMBER = "+15550111"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """Fresh for each test: livekit-server keeps SIP trunks and rules in it."""
    with RedisServer() as r:
        yield r


@pytest.fixture
def livekit(redis: RedisServer) -> Iterator[LiveKitServer]:
    """The room server, sharing ``redis`` with livekit-sip (overrides the bridge tests' own)."""
    with LiveKitServer.local(node_ip=netns.node_ip(), redis_address=redis.address) as server:
        yield server


@pytest.fixture
def sip(livekit: LiveKitServer) -> Iterator[SipServer]:
    with SipServer.beside(livekit) as s:
        yield s


@pytest.fixture
def bridge_settings(livekit: LiveKitServer) -> BridgeSettings:
    """The bridge joins every room with a caller: a phone call makes its own room."""
    return BridgeSettings(
        livekit_url=livekit.url, api_key=livekit.config.api_key,
        api_secret=livekit.config.api_secret, region=REGION, idle_leave_s=0,
        auto_join=True, poll_s=0.2,
    )


@pytest.fixture
async def dial_in(livekit: LiveKitServer, sip: SipServer) -> AsyncIterator[str]:
    """``voxbus sip``'s provisioning: ``NUMBER`` answered by the default agent, ``DESK_NUMBER``
    by ``desk``; the URI a phone dials for ``NUMBER`` (``DESK_NUMBER`` at the same address)."""
    lk = api.LiveKitAPI(livekit.http_url, livekit.config.api_key, livekit.config.api_secret)
    config = SipConfig([PhoneNumber(NUMBER), PhoneNumber(DESK_NUMBER, agent="desk",
                                                          region=REGION)])
    try:
        assert await provision(lk, config) == [
            f"{NUMBER}: answered by the default agent in the default region",
            f"{DESK_NUMBER}: answered by desk in {REGION}"]
        again = await provision(lk, config)  # nothing to change: nothing changes
        assert again == [f"{NUMBER}: unchanged (the default agent in the default region)",
                         f"{DESK_NUMBER}: unchanged (desk in {REGION})"]
    finally:
        await lk.aclose()
    yield f"sip:{NUMBER}@{sip.sip_address}"


@pytest.fixture
async def phone(tmp_path: Path) -> AsyncIterator[SipPhone]:
    far_end = netns.Veth().addresses[1]
    async with SipPhone(tmp=tmp_path, address=far_end) as p:
        yield p


def heard_most(heard: str, said: str) -> bool:
    """Most of ``said``'s words are in ``heard``: through a phone's band tiny.en loses about a
    word in ten, so no test hangs on one word."""
    words = set(normalize_text(said).split())
    return len(words & set(normalize_text(heard).split())) >= len(words) / 2


def to_phone(pcm16k: np.ndarray) -> np.ndarray:
    audio = resample(pcm16_to_float32(pcm16k.tobytes()), in_rate_hz=16_000,
                     out_rate_hz=PHONE_RATE_HZ)
    return np.frombuffer(float32_to_pcm16(audio), dtype="<i2")


async def test_a_phone_call_is_answered_and_the_caller_hears_the_reply(
    bridge: Bridge, bus: Bus, tap: Tap, whisper: WhisperEngine,  # noqa: F811
    kokoro: KokoroEngine, agent_factory: list[Agent], dial_in: str,  # noqa: F811
    phone: SipPhone,
) -> None:
    agent_factory.append(await start_agent(bus, bridge, whisper, kokoro, DEFAULT_SYSTEM_PROMPT))
    await phone.dial(dial_in)
    started = await tap.wait_for(SessionStarted, within_s=20)
    sess = started.session
    await phone.wait("CALL_ESTABLISHED", timeout_s=20)
    await asyncio.sleep(0.5)
    pcm, _ = speech("battery.wav")  # "My phone battery is almost empty."
    await phone.say(to_phone(pcm))

    end = await tap.wait_for(ReplyEnd, session=sess, within_s=40)
    done = await tap.wait_for(AgentSpoke, session=sess, within_s=40,
                              where=lambda m: m.turn == end.turn)
    await asyncio.sleep(1.0)  # the last packets are on their way
    eot = tap.of(EndOfTurn, sess)[0]
    heard = phone.heard()
    audio = resample(pcm16_to_float32(heard.tobytes()), in_rate_hz=PHONE_RATE_HZ,
                     out_rate_hz=16_000)
    text = await asyncio.to_thread(lambda: whisper.transcribe(audio).text)
    error, found = wer(end.text, text)
    print(f"\ncaller (phone): {eot.transcript!r}\nreply: {end.text!r}\nphone heard: {text!r}"
          f"\nWER {error:.2f}, reply words heard {found:.2f}, {len(heard) / PHONE_RATE_HZ:.1f} s")
    assert heard_most(eot.transcript, "my phone battery is almost empty"), eot.transcript
    assert not done.interrupted and end.text.strip()
    assert error <= MAX_WER and found >= MIN_OVERLAP, (end.text, text)
    await phone.hangup()
    await phone.wait("CALL_CLOSED")


async def test_end_call_hangs_the_phone_up_after_the_goodbye(
    bridge: Bridge, bus: Bus, tap: Tap, whisper: WhisperEngine,  # noqa: F811
    kokoro: KokoroEngine, agent_factory: list[Agent], dial_in: str,  # noqa: F811
    phone: SipPhone,
) -> None:
    # the model's side is scripted (SmolLM2 calls no tools): end_call, then its goodbye
    goodbye = FakeLLM([
        FakeTurn(tool_calls=[ToolCallDelta(id="c1", name="end_call", arguments="{}")]),
        FakeTurn.words("Goodbye, and have a lovely evening.", first_token_delay_s=0.2),
    ])
    agent_factory.append(await start_agent(bus, bridge, whisper, kokoro, DEFAULT_SYSTEM_PROMPT,
                                           engine=goodbye, tools=True))
    await phone.dial(dial_in)
    sess = (await tap.wait_for(SessionStarted, within_s=20)).session
    await phone.wait("CALL_ESTABLISHED", timeout_s=20)
    await asyncio.sleep(0.5)
    pcm, _ = speech("battery.wav")
    await phone.say(to_phone(pcm))
    end = await tap.wait_for(ReplyEnd, session=sess, within_s=40)
    assert end.end_call
    spoke = await tap.wait_for(AgentSpoke, session=sess, within_s=20)
    closed = await phone.wait("CALL_CLOSED", timeout_s=10)
    assert closed.param == "Connection reset by peer"  # libre's word for a BYE received
    ended = await tap.wait_for(SessionEnded, session=sess, within_s=10)
    heard = phone.heard()
    audio = resample(pcm16_to_float32(heard.tobytes()), in_rate_hz=PHONE_RATE_HZ,
                     out_rate_hz=16_000)
    text = await asyncio.to_thread(lambda: whisper.transcribe(audio).text)
    print(f"\nphone heard {text!r}, then the call closed: {closed.param!r} "
          f"({closed.t - spoke.at_ns / 1e9 + time.time() - time.monotonic():.2f} s after the "
          f"goodbye played); session ended: {ended.reason}")
    assert not spoke.interrupted and spoke.text == end.text
    assert heard_most(text, "goodbye and have a lovely evening"), text
    assert ended.reason == "agent_hung_up"


async def test_a_key_pressed_on_the_phone_reaches_the_agent(
    bridge: Bridge, bus: Bus, tap: Tap, whisper: WhisperEngine,  # noqa: F811
    kokoro: KokoroEngine, agent_factory: list[Agent], dial_in: str,  # noqa: F811
    phone: SipPhone,
) -> None:
    llm = FakeLLM([FakeTurn.words("You pressed one: sales.")])
    agent_factory.append(await start_agent(bus, bridge, whisper, kokoro, DEFAULT_SYSTEM_PROMPT,
                                           engine=llm))
    await phone.dial(dial_in)
    sess = (await tap.wait_for(SessionStarted, within_s=20)).session
    await phone.wait("CALL_ESTABLISHED", timeout_s=20)
    await asyncio.sleep(1.0)
    await phone.send_digits("1")
    eot = await tap.wait_for(EndOfTurn, session=sess, within_s=10)
    end = await tap.wait_for(ReplyEnd, session=sess, within_s=20)
    asked = llm.calls[0][0][-1]
    print(f"\nkeys {eot.keys!r} (turn {eot.turn}) -> the model was told {asked['content']!r}; "
          f"reply {end.text!r}")
    assert (eot.keys, eot.transcript) == ("1", "")
    assert asked == {"role": "user", "content": "(The caller pressed 1 on the phone keypad.)"}


async def test_transfer_call_sends_the_caller_to_the_person_named_after_saying_so(
    bridge: Bridge, bus: Bus, tap: Tap, whisper: WhisperEngine,  # noqa: F811
    kokoro: KokoroEngine, agent_factory: list[Agent], dial_in: str,  # noqa: F811
    phone: SipPhone, tmp_path: Path,
) -> None:
    far_end = netns.Veth().addresses[1]
    async with SipPhone(tmp=tmp_path / "kitchen", address=far_end, answer="auto") as kitchen:
        desk = VoxAgent(name="desk", instructions="You answer the phone for a restaurant.",
                        transfers={"kitchen": kitchen.uri})
        await AgentRegistry(await bus.kv(agents_bucket(REGION))).publish([desk.definition()])
        model = FakeLLM([
            FakeTurn(tool_calls=[ToolCallDelta(id="c1", name="transfer_call",
                                               arguments='{"to": "kitchen"}')]),
            FakeTurn.words("One moment, I am putting you through to the kitchen.",
                           first_token_delay_s=0.2),
        ])
        agent_factory.append(await start_agent(bus, bridge, whisper, kokoro,
                                               DEFAULT_SYSTEM_PROMPT, engine=model))
        await phone.dial(dial_in.replace(NUMBER, DESK_NUMBER))
        started = await tap.wait_for(SessionStarted, within_s=20)
        assert started.agent == "desk"
        await phone.wait("CALL_ESTABLISHED", timeout_s=20)
        await asyncio.sleep(0.5)
        pcm, _ = speech("battery.wav")
        await phone.say(to_phone(pcm))
        end = await tap.wait_for(ReplyEnd, session=started.session, within_s=40)
        assert end.transfer_to == kitchen.uri
        spoke = await tap.wait_for(AgentSpoke, session=started.session, within_s=20)
        moved = await phone.wait("TRANSFER", timeout_s=15)  # the REFER
        rang = await kitchen.wait("CALL_ESTABLISHED", timeout_s=15)
        heard = phone.heard(call=0)  # the call to the agent (the second is to the kitchen)
        audio = resample(pcm16_to_float32(heard.tobytes()), in_rate_hz=PHONE_RATE_HZ,
                         out_rate_hz=16_000)
        text = await asyncio.to_thread(lambda: whisper.transcribe(audio).text)
        print(f"\ncaller heard {text!r}; REFER to {moved.param!r}; the kitchen answered "
              f"{rang.t - moved.t:.2f} s later")
        assert not spoke.interrupted
        assert heard_most(text, "one moment i am putting you through to the kitchen"), text
        assert kitchen.uri.removeprefix("sip:") in moved.param
        ended = await tap.wait_for(SessionEnded, session=started.session, within_s=15)
        assert ended.reason == "transferred"


async def test_the_agent_calls_a_phone_that_answers_and_speaks_first(
    bridge: Bridge, bus: Bus, tap: Tap, whisper: WhisperEngine,  # noqa: F811
    kokoro: KokoroEngine, agent_factory: list[Agent],  # noqa: F811
    sip: SipServer, tmp_path: Path,
) -> None:
    caller = VoxAgent(name="reminder", instructions="You remind people of their bookings.",
                      greeting="Hello, this is the restaurant calling about your booking.")
    await AgentRegistry(await bus.kv(agents_bucket(REGION))).publish([caller.definition()])
    agent_factory.append(await start_agent(bus, bridge, whisper, kokoro, DEFAULT_SYSTEM_PROMPT,
                                           engine=FakeLLM([FakeTurn.words("Sure.")])))
    far_end = netns.Veth().addresses[1]
    async with SipPhone(tmp=tmp_path, address=far_end, answer="auto") as callee:
        reply = await place_call(bridge, CallRequest(to=callee.uri, agent="reminder"))
        assert reply.ok and reply.status == "answered" and reply.session, reply
        started = await tap.wait_for(SessionStarted, session=reply.session, within_s=10)
        assert started.agent == "reminder"
        await tap.wait_for(AudioOut, session=reply.session, within_s=30, where=lambda m: m.last)
        await asyncio.sleep(4.5)  # the greeting plays in real time
        audio = resample(pcm16_to_float32(callee.heard().tobytes()), in_rate_hz=PHONE_RATE_HZ,
                         out_rate_hz=16_000)
        text = await asyncio.to_thread(lambda: whisper.transcribe(audio).text)
        print(f"\n{describe(reply)}; the phone heard {text!r}")
        assert heard_most(text, "hello this is the restaurant calling about your booking"), text


async def test_a_call_the_phone_rejects_is_one_line_an_event_and_nothing_left(
    bridge: Bridge, bus: Bus, tap: Tap, livekit: LiveKitServer, sip: SipServer,
    tmp_path: Path,
) -> None:
    far_end = netns.Veth().addresses[1]
    async with SipPhone(tmp=tmp_path, address=far_end) as callee:

        async def reject() -> None:
            await callee.wait("CALL_INCOMING", timeout_s=15)
            await callee.hangup()

        rejecting = asyncio.create_task(reject())
        reply = await place_call(bridge, CallRequest(to=callee.uri, ring_s=10))
        await rejecting
    print(f"\n{describe(reply)}")
    assert not reply.ok and reply.status in ("busy", "rejected"), reply
    assert describe(reply).startswith(f"{reply.status}: ")
    error = await tap.wait_for(ErrorEvent, within_s=5)
    assert error.code == f"call_{reply.status}" and error.stage == "bridge"
    await asyncio.sleep(1.0)
    assert reply.room not in bridge.rooms
    lk = api.LiveKitAPI(livekit.http_url, livekit.config.api_key, livekit.config.api_secret)
    try:
        rooms = (await lk.room.list_rooms(api.ListRoomsRequest(names=[reply.room]))).rooms
    finally:
        await lk.aclose()
    assert not rooms, "the room of the failed call is still there"


async def test_a_phone_callers_number_is_only_in_pii_and_a_purge_erases_their_session(
    bridge: Bridge, bus: Bus, tap: Tap, whisper: WhisperEngine,  # noqa: F811
    kokoro: KokoroEngine, agent_factory: list[Agent], dial_in: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    number = "+15557777"
    agent_factory.append(await start_agent(bus, bridge, whisper, kokoro, DEFAULT_SYSTEM_PROMPT,
                                           engine=FakeLLM([FakeTurn.words("Noted.")])))
    far_end = netns.Veth().addresses[1]
    with structlog.testing.capture_logs() as logs:
        async with SipPhone(tmp=tmp_path, address=far_end, user=number) as phone:
            await phone.dial(dial_in)
            sess = (await tap.wait_for(SessionStarted, within_s=20)).session
            await phone.wait("CALL_ESTABLISHED", timeout_s=20)
            await asyncio.sleep(0.5)
            await phone.say(to_phone(speech("battery.wav")[0]))
            await tap.wait_for(ReplyEnd, session=sess, within_s=40)
            await phone.hangup()
            await tap.wait_for(SessionEnded, session=sess, within_s=10)
    digits = number.lstrip("+")
    assert digits not in sess
    leaks = [e for e in logs if any(digits in str(v) for k, v in e.items() if k != "pii")]
    assert not leaks, leaks
    assert any(digits in str(e.get("pii", "")) for e in logs), "the number is nowhere, even in pii"
    # the phone session is erased like any other: its words, its audio, who called
    state = await bus.state(REGION)
    assert number in ((await state.get(f"{sess}.caller")).value or b"").decode()
    await purge_session(bus, REGION, sess)
    for info in await bus.js.streams_info():
        name = info.config.name
        assert name is not None
        if name == ops_stream(REGION):
            continue
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            with contextlib.suppress(Exception):  # a deleted sequence
                raw = await bus.js.get_msg(name, seq)
                assert sess.encode() not in (raw.subject or "").encode() + (raw.data or b""), name
