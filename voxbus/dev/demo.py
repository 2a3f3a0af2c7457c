"""``voxbus demo``: the whole voice loop end to end with a scripted caller in a LiveKit room.

Starts an embedded nats-server, livekit-server (loopback config), the LiveKit bridge and the STT,
LLM and TTS workers; a scripted caller joins a room, speaks a question from a WAV, records the
agent's spoken answer as heard in the room to a WAV, and prints the transcript, the reply and the
latency breakdown measured from the end of the caller's speech.

WebRTC clients ignore loopback, so where it can (root, ``unshare``) the demo re-runs itself inside
a private network namespace (``voxbus.dev.netns``) and nothing touches the machine's network;
elsewhere (a laptop) it runs as is. ``--bus-only`` skips LiveKit: the caller talks to the stages
over the bus.

``--agent NAME`` talks to a published agent instead of the LLM's default: a ``voxbus tools``
worker runs the module that defines it (``--module PATH``; for ``frontdesk`` and ``events``,
``examples/frontdesk/agent.py``) and publishes its agents, the agent is dispatched by name, the
LLM runs a model that calls tools (``LLM_MODEL_NAME=qwen-1.5b`` unless set) when the agent has
tools, and the caller asks a booking question after the agent's greeting. The tools it called
are printed with the reply.

``--phone`` calls the agent on the phone instead: Redis and livekit-sip start beside
livekit-server, a number is answered by the agent (``voxbus sip``), and Debian's baresip dials
it, says the WAV through G.711 and records the answer; the latency is measured at the phone
(``voxbus.dev.phone_caller``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voxbus.audio import write_wav
from voxbus.contracts.messages import AudioOut, ReplyEnd
from voxbus.contracts.streams import audio_stream
from voxbus.contracts.subjects import PREFIX, Kind, subject
from voxbus.dev import netns
from voxbus.dev.child import find_program
from voxbus.dev.livekit_server import (
    LiveKitServerError,
    LiveKitServerMissing,
    livekit_server_binary,
)
from voxbus.dev.loop import VoiceLoop
from voxbus.dev.phone_caller import call_in
from voxbus.dev.probes import TurnResult
from voxbus.dev.sip_phone import PHONE_RATE_HZ
from voxbus.dev.sip_server import livekit_sip_binary
from voxbus.dev.supervise import LoopError, run_supervised
from voxbus.errors import UserError
from voxbus.runtime import logging as vlog
from voxbus.runtime.bus import Bus

DATA = Path(__file__).with_name("data")
QUESTION = DATA / "question.wav"  # "What time does the museum open?" (espeak-ng)
QUESTION_SPEECH_END_MS = 2545
#: "I would like to book a table for two on Friday at seven, under the name Rossi." (espeak-ng,
#: made as tests/fixtures/make_speech.py makes its WAVs: ``make("booking", text)`` with
#: ``OUT_DIR`` here): what the caller asks an ``--agent``. Whisper tiny.en hears it word for word;
#: the same question opening "Could I book" came back as "Good night, well" through Opus.
BOOKING = DATA / "booking.wav"
BOOKING_SPEECH_END_MS = 5289
REPO = Path(__file__).resolve().parents[2]
#: The module that defines an agent, for ``--agent`` without ``--module``.
AGENT_MODULES = {"frontdesk": "examples/frontdesk/agent.py",
                 "events": "examples/frontdesk/agent.py"}
#: The model an agent with tools gets (``LLM_MODEL_NAME``) unless one is set.
TOOLS_MODEL = "qwen-1.5b"
#: ``LLM_TIMEOUT_S`` for it unless set: on 2 shared cores the first reply of a session reads the
#: agent's instructions and tools (about a thousand tokens) and its first token can take a
#: minute or more, far past the default 15 s.
TOOLS_TIMEOUT_S = "150"


@dataclass(frozen=True)
class DemoAgent:
    """``--agent``: who the caller talks to, and what the demo runs for it."""

    name: str
    module: str
    has_tools: bool
    greeting: str


def demo_agent(name: str, module: str | None) -> DemoAgent:
    """The agent ``name`` of ``module`` (default: ``AGENT_MODULES``), loaded as its tools
    worker will load it. Raises ``UserError`` (one line) for a module or agent that is not
    there."""
    from voxbus.agents.loader import load

    if module is None:
        if name not in AGENT_MODULES:
            raise UserError(f"--agent {name}: which module defines it? Give --module PATH")
        module = str(REPO / AGENT_MODULES[name])
        if not Path(module).is_file():
            raise UserError(f"--agent {name}: {AGENT_MODULES[name]} is not in this checkout; "
                            "give --module PATH")
    loaded = load(module)
    if name not in loaded.agents:
        raise UserError(f"--agent {name}: {module} defines no such agent (it defines: "
                        f"{', '.join(sorted(loaded.agents)) or 'none'})")
    agent = loaded.agents[name]
    return DemoAgent(name, module, bool(agent.tools), agent.greeting)

_LABELS = {
    "guess_ms": "words guessed in the silence (STT)",
    "final_transcript_ms": "final transcript (STT)",
    "end_of_turn_ms": "end of turn (STT)",
    "first_llm_text_ms": "first LLM text",
    "first_tts_audio_ms": "first TTS audio (bus)",
    "caller_first_audio_ms": "first agent audio at the caller",
}


def _print_turn(r: TurnResult, out: Path, speech_end_ms: float,
                end: ReplyEnd | None = None) -> None:
    print(f"\nuser said       : {r.transcript!r}")
    print(f"agent answered  : {r.reply!r}")
    if end is not None:
        print(f"answered as     : {end.agent or '(the default agent)'}")
        calls = [f"{t.name}({t.arguments}){'' if t.ok else ' FAILED'}" for t in end.tools]
        print(f"tool calls      : {'; '.join(calls) if calls else '(none)'}")
    print(f"agent audio     : {out} ({len(r.audio) / 2 / r.audio_rate_hz:.2f} s)")
    print(f"latency after the end of the caller's speech ({speech_end_ms:.0f} ms into the WAV):")
    print(f"  {'end of user speech':<33} {0.0:7.1f} ms")
    breakdown = r.breakdown()
    for k, label in _LABELS.items():  # in the order things happen
        if k not in breakdown or (k == "guess_ms" and breakdown[k] is None):
            continue  # no caller in the room, or no reply prepared inside the silence window
        v = breakdown[k]
        print(f"  {label:<33} {'-' if v is None else f'{v:7.1f} ms'}")
    for e in r.errors:
        print(f"  error: {e}")


class Replies:
    """The ``ReplyEnd`` messages of one session (the tools each reply called)."""

    def __init__(self, bus: Bus, region: str, session: str) -> None:
        self.bus, self.subject = bus, subject(region, session, Kind.REPLY)
        self.ends: list[ReplyEnd] = []
        self._sub: Subscription | None = None

    async def _got(self, m: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            msg = await self.bus.read(m.subject, m.data)
            if isinstance(msg, ReplyEnd):
                self.ends.append(msg)

    async def __aenter__(self) -> Replies:
        self._sub = await self.bus.nc.subscribe(self.subject, cb=self._got)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    def of(self, r: TurnResult) -> ReplyEnd | None:
        """The reply the caller heard: the one the committed turn named."""
        mine = [e for e in self.ends if e.turn == r.turn]
        return next((e for e in mine if e.speculation == r.speculation),
                    mine[-1] if mine else None)


async def _greeted(bus: Bus, region: str, session: str, *, room: bool,
                   timeout_s: float = 30.0) -> bool:
    """Wait for the end of the agent's greeting (the turn-0 reply): its last frame on the bus
    and, in a room, as long as its audio lasts from its first frame (the bridge plays turn-0
    audio but reports no ``AgentSpoke`` for it). Read from the stream: it may have ended
    already."""
    stored = f"{PREFIX}.{region}.*.{session}.{Kind.AUDIO_OUT.value}"  # * : its partition
    sub = await bus.js.subscribe(stored, stream=audio_stream(region), ordered_consumer=True)
    first_ns, seconds = 0, 0.0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                raw = await sub.next_msg(timeout=timeout_s)
                msg = await bus.read(raw.subject, raw.data)
                if not isinstance(msg, AudioOut) or msg.turn != 0:
                    continue
                first_ns = first_ns or msg.emitted_ns
                seconds += len(msg.pcm) / 2 / msg.channels / msg.sample_rate_hz
                if msg.last:
                    break
    except TimeoutError:
        return False
    finally:
        await sub.unsubscribe()
    if room and first_ns:
        await asyncio.sleep(max(0.0, first_ns / 1e9 + seconds + 0.3 - time.time()))
    return True


async def _one_call(loop: VoiceLoop, args: argparse.Namespace, region: str, out: Path,
                    tag: str) -> tuple[TurnResult, ReplyEnd | None]:
    """One caller of ``region`` speaks ``--wav``: in a room of its own, or over the bus."""
    agent: DemoAgent | None = args.demo_agent
    name = agent.name if agent else ""
    bus = loop.buses[region]
    if loop.with_livekit:
        room = args.room if args.room and len(loop.regions) == 1 else f"{args.room or 'demo'}-{tag}"
        caller = await loop.room_caller(room, region=region, agent=name)
        print(f"[{region}] caller joined room {room!r} (session {caller.session})"
              + (f", talking to agent {name!r}" if name else ""), flush=True)
        try:
            async with Replies(bus, region, caller.session) as replies:
                await _greeting(loop, region, caller.session, agent, room=True)
                print(f"[{region}] caller speaks {args.wav} ...", flush=True)
                r = await caller.say(Path(args.wav), args.speech_end_ms, timeout_s=args.timeout)
                return r, replies.of(r) if agent else None
        finally:
            await caller.close()
    session = f"demo-{tag}"
    async with Replies(bus, region, session) as replies:
        bus_caller = await loop.caller(session, region, agent=name)
        try:
            await _greeting(loop, region, session, agent, room=False)
            print(f"[{region}] caller speaks {args.wav} over the bus ...", flush=True)
            r = await bus_caller.say(Path(args.wav), args.speech_end_ms,
                                     timeout_s=args.timeout)
            return r, replies.of(r) if agent else None
        finally:
            await bus_caller.close()


async def _greeting(loop: VoiceLoop, region: str, session: str, agent: DemoAgent | None, *,
                    room: bool) -> None:
    """The caller waits for the agent's greeting to end before it speaks."""
    if agent is None or not agent.greeting:
        return
    done = await _greeted(loop.buses[region], region, session, room=room)
    print(f"[{region}] agent greeted{'' if done else ' (its end not seen)'}: "
          f"{agent.greeting!r}", flush=True)


async def _run(args: argparse.Namespace) -> int:
    livekit = not args.bus_only
    regions = [r.strip() for r in (args.regions or "").split(",") if r.strip()]
    agent: DemoAgent | None = args.demo_agent
    scratch = tempfile.TemporaryDirectory(prefix="voxbus-demo-")
    # What the processes it starts get, each unless set: with an agent that has tools, a model
    # that calls them; examples/frontdesk keeps this run's bookings in a scratch file.
    defaults: dict[str, str] = {}
    if agent is not None:
        if agent.has_tools and not os.environ.get("LLM_MODEL_NAME"):
            defaults.update(LLM_MODEL_NAME=TOOLS_MODEL, LLM_TIMEOUT_S=TOOLS_TIMEOUT_S)
        defaults["FRONTDESK_DB"] = str(Path(scratch.name) / "frontdesk.sqlite3")
    env = {k: v for k, v in defaults.items() if k not in os.environ}
    loop = VoiceLoop(region="demo", regions=regions, livekit=livekit,
                     cluster_size=args.cluster_size if regions else 0, env=env,
                     tools=[agent.module] if agent else [], phone=args.phone)
    what = "nats-server, livekit-server, the bridge and" if livekit else "nats-server and"
    if regions:
        what = (f"a NATS supercluster ({', '.join(regions)}: {args.cluster_size} server(s) "
                f"each), " + ("livekit-server, the bridge and " if livekit else ""))
    workers = "stt, llm, tts" + (", tools" if agent else "")
    print(f"starting {what} the {workers} workers (loading models)...", flush=True)
    if agent is not None:
        model = os.environ.get("LLM_MODEL_NAME") or env.get("LLM_MODEL_NAME") or "the default"
        print(f"agent {agent.name!r} from {agent.module} (LLM_MODEL_NAME: {model})", flush=True)
        if agent.has_tools:
            print("(its first answer reads the agent's instructions and tools first: on 2 "
                  "cores that can take a minute or more)", flush=True)
    t0 = time.monotonic()
    try:
        try:
            await loop.start(timeout_s=args.start_timeout)
        except (LoopError, LiveKitServerError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"ready in {time.monotonic() - t0:.1f} s", flush=True)
        if args.web is not None:
            return await _serve_page(loop, args)
        if args.phone:
            return await _phone_call(loop, args, Path(scratch.name))
        out = Path(args.out)
        outs = {r: out if len(loop.regions) == 1 else out.with_name(f"{out.stem}-{r}{out.suffix}")
                for r in loop.regions}
        tag = str(int(time.time()))
        try:
            results = await asyncio.gather(*(
                _one_call(loop, args, r, outs[r], f"{tag}-{r}" if regions else tag)
                for r in loop.regions))
        except LoopError as e:
            print(f"error: {e}\n(WebRTC never uses loopback: it needs a network interface "
                  "other than lo. As root with unshare the demo makes a private network "
                  "namespace for that; or try --bus-only.)", file=sys.stderr)
            return 1
        failed = False
        for region, (r, end) in zip(loop.regions, results, strict=True):
            write_wav(outs[region], bytes(r.audio), sample_rate_hz=r.audio_rate_hz)
            if regions:
                print(f"\n== region {region}")
            _print_turn(r, outs[region], args.speech_end_ms, end)
            if args.json:
                extra = {} if end is None else {
                    "agent": end.agent, "tools": [msgspec.to_builtins(t) for t in end.tools]}
                print(json.dumps({"region": region, "transcript": r.transcript,
                                  "reply": r.reply, **extra, **r.breakdown()}))
            failed = failed or not (r.reply and r.audio)
        if failed:
            print("error: no answer came back", file=sys.stderr)
            return 1
        return 0
    finally:
        print("shutting down...", flush=True)
        await loop.stop()
        scratch.cleanup()


async def _phone_call(loop: VoiceLoop, args: argparse.Namespace, scratch: Path) -> int:
    """``--phone``: baresip calls the agent's number, says ``--wav``, records the answer."""
    agent: DemoAgent | None = args.demo_agent
    uri = await loop.answer_number(agent.name if agent else "")
    assert loop.bus is not None
    print(f"phone dials {uri} and says {args.wav} (G.711, 8 kHz) ...", flush=True)
    turn = await call_in(loop.bus, loop.region, uri, Path(args.wav), args.speech_end_ms,
                         tmp=scratch / "phone", timeout_s=args.timeout,
                         greeting=bool(agent and agent.greeting))
    out = Path(args.out)
    write_wav(out, turn.heard.tobytes(), sample_rate_hz=PHONE_RATE_HZ)
    print(f"\ncaller said (on the phone): {turn.transcript!r}")
    print(f"agent answered           : {turn.reply!r}")
    print(f"agent audio at the phone : {out} ({turn.heard.size / PHONE_RATE_HZ:.2f} s, 8 kHz)")
    v2v = turn.voice_to_voice_ms
    print("voice to voice at the phone (end of the caller's words -> the agent's first "
          f"sound): {'-' if v2v is None else f'{v2v:.0f} ms'}")
    for e in turn.errors:
        print(f"  error: {e}")
    if args.json:
        print(json.dumps({"phone": True, "transcript": turn.transcript, "reply": turn.reply,
                          "voice_to_voice_ms": v2v}))
    if turn.errors or not turn.reply:
        print("error: no answer came back", file=sys.stderr)
        return 1
    return 0


async def _serve_page(loop: VoiceLoop, args: argparse.Namespace) -> int:
    """``--web``: the browser page instead of the scripted caller, until Ctrl-C."""
    from voxbus.services.bridge.dispatch import request_dispatch
    from voxbus.web.server import WebApp

    assert loop.livekit is not None
    nats_url, region = loop.url(), loop.region

    async def dispatch(room: str, agent: str) -> str:
        reply = await request_dispatch(room, nats_url=nats_url, region=region, agent=agent)
        return "" if reply.ok else reply.error

    async def agents() -> list[str]:
        from voxbus.services.bridge.agents import published_agents

        assert loop.bus is not None
        return await published_agents(loop.bus.js, region)

    lk = loop.livekit
    app = WebApp(lk.url, lk.config.api_key, lk.config.api_secret, dispatch, agents)
    try:
        server = await app.serve(args.web_host, args.web)
    except OSError as e:
        print(f"error: cannot serve the page on {args.web_host}:{args.web}: {e.strerror or e}",
              file=sys.stderr)
        return 1
    print(f"open http://{args.web_host}:{args.web}/ in a browser, join, and talk "
          "(Ctrl-C stops everything)", flush=True)
    if netns.in_private_netns():
        print("note: this demo runs inside a private network namespace (for WebRTC on this "
              "machine): the page is reachable from inside it only; on a laptop run it as a "
              "normal user (or with --no-netns) to open it in your browser", flush=True)
    async with server:
        await asyncio.Event().wait()  # until Ctrl-C cancels us
    return 0


async def _main(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await _run(args)
    except asyncio.CancelledError:
        print("stopped", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="voxbus demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wav", help="what the caller says (PCM16 WAV; default: a question "
                    "about the museum, or with --agent a booking)")
    ap.add_argument("--speech-end-ms", type=float,
                    help="where the speech in --wav ends (latencies are measured from there)")
    ap.add_argument("--agent", metavar="NAME", help="talk to this agent (its tools run in a "
                    "tools worker; with tools the LLM is LLM_MODEL_NAME, default qwen-1.5b)")
    ap.add_argument("--module", metavar="PATH", help="with --agent: the module that defines it "
                    "(default for frontdesk and events: examples/frontdesk/agent.py)")
    ap.add_argument("--out", default="agent-answer.wav", help="the agent's answer as heard")
    ap.add_argument("--bus-only", action="store_true",
                    help="no LiveKit: the caller speaks to the stages over the bus")
    ap.add_argument("--no-netns", action="store_true",
                    help="never re-run inside a private network namespace")
    ap.add_argument("--room", help="room name (default: demo-<time>)")
    ap.add_argument("--timeout", type=float,
                    help="seconds after the end of speech to wait for the whole answer "
                    "(default 30; 180 with an agent that has tools)")
    ap.add_argument("--start-timeout", type=float, default=300.0,
                    help="seconds to wait for the models to load")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--regions", default="", metavar="R1,R2",
                    help="run on a NATS supercluster, one cluster per region, and one caller "
                         "per region at once (each session's data on its region's servers)")
    ap.add_argument("--cluster-size", type=int, default=1, metavar="N",
                    help="with --regions: servers per region (3: replicated streams)")
    ap.add_argument("--web", nargs="?", type=int, const=8080, default=None, metavar="PORT",
                    help="serve the browser page (default port 8080) instead of the scripted "
                         "caller; prints its URL")
    ap.add_argument("--web-host", default="127.0.0.1", help="with --web: the address to serve on")
    ap.add_argument("--phone", action="store_true",
                    help="call the agent with a real SIP phone (baresip) through livekit-sip")
    args = ap.parse_args(argv)
    if args.phone and (args.bus_only or args.web is not None or args.regions):
        ap.error("--phone goes through LiveKit in one region: leave out --bus-only, --web "
                 "and --regions")
    if args.module and not args.agent:
        ap.error("--module goes with --agent NAME")
    args.demo_agent = demo_agent(args.agent, args.module) if args.agent else None
    if args.wav is None:
        args.wav = str(BOOKING if args.agent else QUESTION)
        if args.speech_end_ms is None:
            args.speech_end_ms = BOOKING_SPEECH_END_MS if args.agent else QUESTION_SPEECH_END_MS
    if args.speech_end_ms is None:
        ap.error("--wav needs --speech-end-ms (where its speech ends)")
    if args.timeout is None:
        tools = args.demo_agent is not None and args.demo_agent.has_tools
        args.timeout = 180.0 if tools else 30.0
    if not 1 <= args.cluster_size <= 9:
        ap.error("--cluster-size must be within 1..9")
    if args.web is not None and args.bus_only:
        ap.error("--web needs LiveKit: leave out --bus-only")
    if args.web is not None:
        from voxbus.web.server import check_bundle

        check_bundle()  # a UserError: one line, from ``voxbus.cli``
    if not args.bus_only:
        try:
            livekit_server_binary()
        except LiveKitServerMissing as e:
            raise LiveKitServerMissing(f"{e} (or run the demo with --bus-only)") from None
    if args.phone:
        livekit_sip_binary()  # one line when it is not installed
        find_program("baresip", hint="run ./dev setup, or install Debian's baresip-core")
        find_program("redis-server", hint="run ./dev setup, or install Debian's redis-server")
    rc = run_supervised("voxbus.dev.demo", argv, want_netns=not args.bus_only,
                        no_netns=args.no_netns)
    if rc is not None:
        return rc
    vlog.configure("warning")
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
