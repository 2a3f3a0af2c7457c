"""Voice-to-voice benchmark: end of the caller's speech to the first agent audio, through the
real STT, LLM and TTS workers (separate processes) on an embedded nats-server.

    voxbus bench voice [--turns 20] [--rooms 3] [--room-turns 6]

The per-stage breakdown is taken from the stages' OpenTelemetry traces (each worker writes its
spans to a JSON-lines file; one conversational turn is one trace): STT end of turn published,
LLM first clause published, TTS first audio frame published, each measured from the end of
speech. Then the same with several sessions ("rooms") talking at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.report import percentile, print_table, write_json
from runtime import logging as vlog
from runtime.tracing import turn_trace_id
from voxbus.voiceloop import TurnResult, VoiceLoop

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "speech"


def _fixtures() -> list[tuple[Path, float]]:
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    return [(FIXTURES / it["file"], float(it["speech_end_ms"])) for it in manifest["items"]]


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
    spans = traces.get(f"{turn_trace_id(r.session, turn):032x}", [])
    end_ns = int(r.speech_end * 1e9)

    def ms(t: int | None) -> float | None:
        return None if t is None else round((t - end_ns) / 1e6, 1)

    producer = [s for s in spans if s["name"] == "publish EndOfTurn"]
    return {
        "stt_end_of_turn_ms": ms(min((s["start_ns"] for s in producer), default=None)),
        "llm_first_clause_ms": ms(_first(spans, "llm ", "ReplyText")),
        "tts_first_audio_ms": ms(_first(spans, "tts ", "AudioOut")),
        "caller_first_audio_ms": r.breakdown()["first_tts_audio_ms"],
    }


async def _conversation(loop: VoiceLoop, session: str, turns: int,
                        fixtures: list[tuple[Path, float]], offset: int) -> list[TurnResult]:
    caller = await loop.caller(session)
    results = []
    for i in range(turns):
        wav, end_ms = fixtures[(offset + i) % len(fixtures)]
        results.append(await caller.say(wav, end_ms))
        await asyncio.sleep(0.5)
    return results


def _summarize(label: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"setting": label, "turns": len(rows)}
    for key in ("caller_first_audio_ms", "stt_end_of_turn_ms", "llm_first_clause_ms",
                "tts_first_audio_ms"):
        vals = [r[key] for r in rows if r.get(key) is not None]
        out[f"{key[:-3]}_p50"] = round(percentile(vals, 50), 1) if vals else None
        if key == "caller_first_audio_ms":
            out[f"{key[:-3]}_p95"] = round(percentile(vals, 95), 1) if vals else None
    out["failed"] = sum(1 for r in rows if r.get("caller_first_audio_ms") is None)
    return out


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    fixtures = _fixtures()
    with tempfile.TemporaryDirectory(prefix="voxbus-traces-") as td:
        loop = VoiceLoop(region="bench", echo=False, env={"VOXBUS_TRACE_DIR": td})
        await loop.start()
        try:
            single = await _conversation(loop, "solo", args.turns, fixtures, 0)
            multi_lists = await asyncio.gather(*(
                _conversation(loop, f"room{i}", args.room_turns, fixtures, i)
                for i in range(args.rooms)
            ))
        finally:
            await loop.stop()
        traces = _spans(Path(td))
    rows_single = [{**_breakdown(r, i + 1, traces), "reply": r.reply, "heard": r.transcript,
                    "errors": r.errors} for i, r in enumerate(single)]
    rows_multi = [{**_breakdown(r, i + 1, traces), "reply": r.reply, "heard": r.transcript,
                   "errors": r.errors}
                  for results in multi_lists for i, r in enumerate(results)]
    summary = [_summarize("1 session", rows_single),
               _summarize(f"{args.rooms} sessions at once", rows_multi)]
    return {"summary": summary, "turns_single": rows_single, "turns_concurrent": rows_multi}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="voxbus bench voice")
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--rooms", type=int, default=3)
    ap.add_argument("--room-turns", type=int, default=6)
    args = ap.parse_args(argv)
    vlog.configure("warning")
    result = asyncio.run(_run(args))
    print_table("voice to voice, ms after the end of the caller's speech (p50 unless noted)",
                result["summary"])
    write_json("voice", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
