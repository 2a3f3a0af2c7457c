"""Voice-to-voice benchmark: end of the caller's speech to the first agent audio, through the
real STT, LLM and TTS workers (separate processes) on an embedded nats-server.

    voxbus bench voice [--livekit [--sip]] [--turns 20] [--rooms 3] [--room-turns 6]
                       [--tts kokoro,piper] [--speculate on,off] [--llm-engines 1,2]
                       [--vary NAME=V1,V2] [--echo]

Bus mode (the default): the caller publishes its audio on the bus and "hears" the first
``AudioOut`` frame on the bus. ``--livekit``: livekit-server (loopback config) and the bridge
process run too, and each caller is a participant in a LiveKit room with a live microphone;
voice to voice is measured at the caller, from the end of its speech (as it went into its
microphone track) to the first agent audio frame it received from the room (Opus, the SFU and the
jitter buffer included). Like ``voxbus demo``, ``--livekit`` re-runs itself inside a private
network namespace where root and ``unshare`` allow (WebRTC ignores loopback), else runs as is.
Results: ``bench/results/voice.json`` (bus) and ``bench/results/voice-livekit.json``.
``--sip`` (with ``--livekit``): right after the one room's turns, the same turns through a phone
call (baresip, G.711, livekit-sip, as ``voxbus demo --phone``), voice to voice measured at the
phone on its own recordings, and the word error rate of the phone-band transcripts beside the
room's.

The per-stage breakdown is taken from the stages' OpenTelemetry traces (each worker writes its
spans to a JSON-lines file; one conversational turn is one trace): STT end of turn published,
LLM first text published, TTS first audio frame published, each measured from the end of
speech. Then the same with several sessions ("rooms") talking at once. With ``--tts
kokoro,piper`` the whole run is done once per voice (``TTS_ENGINE``), one after the other in
one invocation, so the voices are compared on the same machine state; each summary row also
gives the word error rate of the user transcripts against the fixtures' text. ``--speculate
on,off`` does the same with and without replies prepared inside the silence window; the rows
give the speculation hit rate (turns whose reply was the prepared one) and the prepared replies
thrown away.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from voxbus.bench.report import percentile, print_table, write_json
from voxbus.dev.callers import RoomCaller
from voxbus.dev.loop import VoiceLoop
from voxbus.dev.phone_caller import PhoneConversation, PhoneTurn
from voxbus.dev.probes import TurnResult
from voxbus.dev.supervise import LoopError, run_supervised
from voxbus.runtime import logging as vlog
from voxbus.runtime.tracing import turn_trace_id
from voxbus.services.stt.normalize import word_errors

FIXTURES_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
#: ``varied``: 24 sentences, five voices, a third noisy (``tests/fixtures/make_varied.py``);
#: ``speech``: the six espeak sentences the STT tests use.
#: ``frontdesk``: 16 things callers say to a restaurant's front desk, half needing a fast tool
#: (``tests/fixtures/make_frontdesk.py``), for ``--agent frontdesk``.
FIXTURE_SETS = ("varied", "speech", "frontdesk")


def _fixtures(which: str) -> list[tuple[Path, float]]:
    d = FIXTURES_DIR / which
    manifest = json.loads((d / "manifest.json").read_text())
    return [(d / it["file"], float(it["speech_end_ms"])) for it in manifest["items"]]


def _texts(which: str) -> dict[str, str]:
    manifest = json.loads((FIXTURES_DIR / which / "manifest.json").read_text())
    return {it["file"]: it["text"] for it in manifest["items"]}


def _spans(trace_dir: Path) -> dict[str, list[dict[str, Any]]]:
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for f in trace_dir.glob("*.jsonl"):
        for line in f.read_text().splitlines():
            span = json.loads(line)
            by_trace.setdefault(span["trace_id"], []).append(span)
    return by_trace


def _first(spans: list[dict[str, Any]], span_prefix: str, publish: str) -> int | None:
    """Earliest time (ns) a span named ``span_prefix...`` published a ``publish`` message:
    either as an event on the handler span or as the handler span's own producer span."""
    times: list[int] = []
    for s in spans:
        if s["name"] == f"publish {publish}" and s.get("stage", "") in ("", span_prefix):
            times.append(s["start_ns"])
        if s["name"].startswith(span_prefix):
            times += [e["ts_ns"] for e in s["events"] if e["name"] == f"publish {publish}"]
    return min(times) if times else None


def _breakdown(r: TurnResult, turn: int, traces: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    spans = traces.get(f"{turn_trace_id(r.session, r.turn or turn):032x}", [])
    end_ns = int(r.speech_end * 1e9)

    def ms(t: int | None) -> float | None:
        return None if t is None else round((t - end_ns) / 1e6, 1)

    producer = [s for s in spans if s["name"] == "publish EndOfTurn"]
    bd = r.breakdown()
    reply = f".s{r.speculation}" if r.speculation else ""  # the reply the caller got
    row = {
        "stt_end_of_turn_ms": ms(min((s["start_ns"] for s in producer), default=None)),
        "llm_first_text_ms": ms(_first(spans, "llm ", "ReplyText" + reply)),
        "tts_first_audio_ms": ms(_first(spans, "tts ", "AudioOut" + reply)),
        "stt_decode_ms": r.decode_ms,  # the committed final's decode
        "stt_guess_ms": bd["guess_ms"],  # the guess it adopted went out (speculated turns)
        "speculated": bool(r.speculation),
        "guesses": r.guesses,
        # bus mode: the caller hears the first AudioOut on the bus; livekit: in the room
        "caller_first_audio_ms": bd.get("caller_first_audio_ms", bd["first_tts_audio_ms"]),
    }
    if "caller_first_audio_ms" in bd:
        row["bus_first_audio_ms"] = bd["first_tts_audio_ms"]
    return row


async def _conversation(loop: VoiceLoop, session: str, turns: int,
                        fixtures: list[tuple[Path, float]], offset: int) -> list[TurnResult]:
    caller = await loop.caller(session)
    results = []
    try:
        for i in range(turns):
            wav, end_ms = fixtures[(offset + i) % len(fixtures)]
            results.append(await caller.say(wav, end_ms))
            results[-1].fixture = wav.name
            await asyncio.sleep(0.5)
    finally:
        await caller.close()
    return results


async def _room_conversation(loop: VoiceLoop, room: str, turns: int,
                             fixtures: list[tuple[Path, float]], offset: int) -> list[TurnResult]:
    caller = await RoomCaller.connect(loop, room)
    results = []
    try:
        for i in range(turns):
            wav, end_ms = fixtures[(offset + i) % len(fixtures)]
            results.append(await caller.say(wav, end_ms, timeout_s=60.0))
            results[-1].fixture = wav.name
            await asyncio.sleep(0.5)
    finally:
        await caller.close()
    return results


async def _phone_conversation(loop: VoiceLoop, turns: int, fixtures: list[tuple[Path, float]],
                              tmp: Path) -> list[PhoneTurn]:
    """``turns`` turns of one phone call to the loop's number."""
    assert loop.bus is not None
    uri = await loop.answer_number()
    results: list[PhoneTurn] = []
    async with PhoneConversation(loop.bus, loop.region, uri, tmp=tmp / "phone") as call:
        for i in range(turns):
            wav, end_ms = fixtures[i % len(fixtures)]
            results.append(await call.say(wav, end_ms))
            await asyncio.sleep(0.5)
    return results


def _phone_row(t: PhoneTurn, fixture: str, texts: dict[str, str]) -> dict[str, Any]:
    said = texts.get(fixture, "")
    return {"caller_first_audio_ms": t.voice_to_voice_ms, "reply": t.reply,
            "heard": t.transcript, "said": said, "words": len(said.split()),
            "word_errors": word_errors(said, t.transcript), "errors": t.errors}


def _summarize(label: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"setting": label, "turns": len(rows)}
    keys = ["caller_first_audio_ms", "stt_guess_ms", "stt_decode_ms", "stt_end_of_turn_ms",
            "llm_first_text_ms", "tts_first_audio_ms"]
    if any("bus_first_audio_ms" in r for r in rows):
        keys.append("bus_first_audio_ms")
    for key in keys:
        vals = [r[key] for r in rows if r.get(key) is not None]
        out[f"{key[:-3]}_p50"] = round(percentile(vals, 50), 1) if vals else None
        if key == "caller_first_audio_ms":
            out[f"{key[:-3]}_p95"] = round(percentile(vals, 95), 1) if vals else None
    # speculation: turns whose reply was the one prepared inside the silence window, and the
    # prepared replies thrown away (the user went on, or the committed words differed)
    hits = sum(1 for r in rows if r.get("speculated"))
    out["speculation_hit_rate"] = round(hits / len(rows), 2) if rows else None
    out["guesses_dropped"] = sum(r.get("guesses", 0) for r in rows) - hits
    words = sum(r["words"] for r in rows)
    out["transcript_wer"] = round(sum(r["word_errors"] for r in rows) / words, 3) if words else None
    out["failed"] = sum(
        1 for r in rows if r.get("caller_first_audio_ms") is None
        or any("no complete answer" in e for e in r["errors"])
    )
    return out


class _ToolCalls:
    """The tool calls of each (session, turn), heard on the bus (``ToolCall.call_id`` names its
    turn: ``t<turn>-...``)."""

    def __init__(self) -> None:
        self.by_turn: dict[tuple[str, int], list[str]] = {}

    async def listen(self, loop: VoiceLoop) -> None:
        from voxbus.contracts.messages import ToolCall

        assert loop.bus is not None

        async def got(msg: Any) -> None:
            assert loop.bus is not None
            call = await loop.bus.read(msg.subject, msg.data)
            if isinstance(call, ToolCall):
                turn = int(call.call_id.split("-", 1)[0].removeprefix("t"))
                self.by_turn.setdefault((call.session, turn), []).append(call.tool)

        await loop.bus.nc.subscribe(f"voxbus.{loop.region}.*.tool.call", cb=got)

    def of(self, r: TurnResult) -> list[str]:
        return self.by_turn.get((r.session, r.turn), [])


async def _run(args: argparse.Namespace, tts: str, speculate: bool,
               engines: int | None, vary: tuple[str, str] | None) -> dict[str, Any]:
    fixtures, texts = _fixtures(args.fixtures), _texts(args.fixtures)
    env = {"TTS_ENGINE": tts, "STT_SPECULATIVE_REPLIES": "1" if speculate else "0"}
    tools: list[str] = []
    if args.agent:  # every session talks to it (LLM_AGENT); its module's tools run
        from voxbus.dev.demo import TOOLS_MODEL, demo_agent

        agent = demo_agent(args.agent, args.module)
        tools = [agent.module]
        env["LLM_AGENT"] = agent.name
        if agent.has_tools:
            env["LLM_MODEL_NAME"] = TOOLS_MODEL
    if vary is not None:
        env[vary[0]] = vary[1]
        if vary[0].startswith("VOXBUS_"):  # the bus settings of this process too (its callers)
            os.environ[vary[0]] = vary[1]
    if engines is not None:
        env["LLM_ENGINES"] = str(engines)
    with tempfile.TemporaryDirectory(prefix="voxbus-traces-") as td:
        loop = VoiceLoop(region="bench", echo=args.echo, livekit=args.livekit,
                         env={"VOXBUS_TRACE_DIR": td, **env}, tools=tools, phone=args.sip)
        await loop.start()
        calls = _ToolCalls()
        await calls.listen(loop)
        talk = _room_conversation if args.livekit else _conversation
        phone: list[PhoneTurn] = []
        try:
            single = await talk(loop, "solo", args.turns, fixtures, 0)
            if args.sip:
                phone = await _phone_conversation(loop, args.turns, fixtures, Path(td))
            multi_lists = await asyncio.gather(*(
                talk(loop, f"room{i}", args.room_turns, fixtures, i)
                for i in range(args.rooms)
            ))
        finally:
            await loop.stop()
        traces = _spans(Path(td))

    def row(r: TurnResult, i: int) -> dict[str, Any]:
        said = texts.get(r.fixture, "")
        return {**_breakdown(r, i + 1, traces), "reply": r.reply, "heard": r.transcript,
                "said": said, "words": len(said.split()), "tools": calls.of(r),
                "word_errors": word_errors(said, r.transcript), "errors": r.errors}

    rows_single = [row(r, i) for i, r in enumerate(single)]
    rows_multi = [row(r, i) for results in multi_lists for i, r in enumerate(results)]
    where = "rooms" if args.livekit else "sessions"
    label = tts + ("" if speculate else " (no speculation)") + (
        "" if engines is None else f" ({engines} LLM engine{'s' if engines > 1 else ''})") + (
        "" if vary is None else f" ({vary[0]}={vary[1]})")
    summary = [_summarize(f"{label}: 1 {where[:-1]}", rows_single)]
    rows_phone = [_phone_row(t, fixtures[i % len(fixtures)][0].name, texts)
                  for i, t in enumerate(phone)]
    if args.sip:
        summary.append(_summarize(f"{label}: 1 phone call (G.711, livekit-sip)", rows_phone))
    summary.append(_summarize(f"{label}: {args.rooms} {where} at once", rows_multi))
    if args.agent:  # turns with and without a tool call, apart
        every = rows_single + rows_multi
        summary += [
            _summarize(f"{label}: turns without a tool", [r for r in every if not r["tools"]]),
            _summarize(f"{label}: turns with a tool", [r for r in every if r["tools"]])]
    return {"mode": "livekit" if args.livekit else "bus", "tts": tts, "speculate": speculate,
            "agent": args.agent or None,
            "llm_engines": engines, "setting": None if vary is None else "=".join(vary),
            "summary": summary,
            "turns_single": rows_single, "turns_concurrent": rows_multi,
            **({"turns_phone": rows_phone} if args.sip else {})}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="voxbus bench voice")
    ap.add_argument("--livekit", action="store_true",
                    help="callers in LiveKit rooms through the bridge (default: over the bus)")
    ap.add_argument("--no-netns", action="store_true",
                    help="with --livekit: never re-run inside a private network namespace")
    ap.add_argument("--sip", action="store_true",
                    help="with --livekit: the same turns through a phone call too (livekit-sip, "
                         "a real SIP phone), compared in the same run")
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--rooms", type=int, default=3)
    ap.add_argument("--room-turns", type=int, default=6)
    ap.add_argument("--fixtures", choices=FIXTURE_SETS, default="varied",
                    help="what the callers say (default: 24 varied sentences, five voices)")
    ap.add_argument("--tts", default="kokoro",
                    help="comma-separated voices to compare in one run: kokoro, piper")
    ap.add_argument("--speculate", default="on",
                    help="on, off or on,off: replies prepared inside the silence window "
                         "(STT_SPECULATIVE_REPLIES); on,off compares both in one run")
    ap.add_argument("--llm-engines", default="",
                    help="comma-separated LLM_ENGINES values to compare in one run (e.g. 1,2; "
                         "default: the stage's)")
    ap.add_argument("--agent", default="",
                    help="every session talks to this agent (its module's tools run; a model "
                         "that calls tools if it has tools); turns with and without a tool call "
                         "are summarized apart")
    ap.add_argument("--module", default=None,
                    help="with --agent: the module that defines it (default: as voxbus demo)")
    ap.add_argument("--echo", action="store_true",
                    help="print the workers' log lines (warnings included: why a turn was late)")
    ap.add_argument("--vary", default="",
                    help="NAME=V1,V2: one run per value of a worker setting, compared in one "
                         "run (e.g. TTS_FIRST_WORDS=3,5)")
    args = ap.parse_args(argv)
    if args.sip and not args.livekit:
        ap.error("--sip compares a phone call with a room: it needs --livekit")
    name, _, values = args.vary.partition("=")
    if args.vary and (not name.isidentifier() or not name.isupper() or not values.strip(",")):
        ap.error(f"--vary takes NAME=V1,V2 (an environment setting), got {args.vary!r}")
    varies: list[tuple[str, str] | None] = [
        (name, v.strip()) for v in values.split(",") if v.strip()] or [None]
    voices = [v.strip() for v in args.tts.split(",") if v.strip()]
    if not voices or any(v not in ("kokoro", "piper") for v in voices):
        ap.error(f"--tts takes kokoro and/or piper, got {args.tts!r}")
    modes = [v.strip() for v in args.speculate.split(",") if v.strip()]
    if not modes or any(v not in ("on", "off") for v in modes):
        ap.error(f"--speculate takes on and/or off, got {args.speculate!r}")
    try:
        engine_counts: list[int | None] = [int(v) for v in args.llm_engines.split(",")
                                           if v.strip()] or [None]
    except ValueError:
        ap.error(f"--llm-engines takes numbers, got {args.llm_engines!r}")
    if any(n is not None and n < 1 for n in engine_counts):
        ap.error("--llm-engines: each count must be at least 1")
    rc = run_supervised("voxbus.bench.voice", argv, want_netns=args.livekit, no_netns=args.no_netns)
    if rc is not None:
        return rc
    vlog.configure("warning")
    runs = []
    try:
        for tts in voices:
            for mode in modes:
                for engines in engine_counts:
                    for vary in varies:
                        print(f"== {tts}, speculation {mode}, LLM engines "
                              f"{engines or 'default'}"
                              + ("" if vary is None else f", {vary[0]}={vary[1]}"), flush=True)
                        runs.append(asyncio.run(_run(args, tts, mode == "on", engines, vary)))
    except LoopError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    where = "in the room" if args.livekit else "on the bus"
    print_table(f"voice to voice ({runs[0]['mode']}), ms after the end of the caller's speech; "
                f"caller_first_audio = first agent audio {where} (p50 unless noted)",
                [row for run in runs for row in run["summary"]])
    result = {**runs[0], "summary": [row for run in runs for row in run["summary"]],
              "runs": runs} if len(runs) > 1 else runs[0]
    write_json("voice-livekit" if args.livekit else "voice", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
