"""``voxbus demo``: the voice loop end to end with a scripted caller.

Starts an embedded nats-server and the STT, LLM and TTS workers, speaks a question from a WAV,
records the agent's spoken answer to a WAV and prints the transcript, the reply and the latency
breakdown measured from the end of the caller's speech.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from runtime import logging as vlog
from services.stt.audio import write_wav
from voxbus.voiceloop import TurnResult, VoiceLoop

DATA = Path(__file__).with_name("data")
QUESTION = DATA / "question.wav"  # "What time does the museum open?" (espeak-ng)
QUESTION_SPEECH_END_MS = 2545


def _print_turn(r: TurnResult, out: Path) -> None:
    print(f"\nuser said       : {r.transcript!r}")
    print(f"agent answered  : {r.reply!r}")
    print(f"agent audio     : {out} ({len(r.audio) / 2 / r.audio_rate_hz:.2f} s)")
    print("latency after the end of the caller's speech:")
    for k, v in r.breakdown().items():
        print(f"  {k:<22} {'-' if v is None else f'{v:7.1f} ms'}")
    for e in r.errors:
        print(f"  error: {e}")


async def _run(args: argparse.Namespace) -> int:
    loop = VoiceLoop(region="demo")
    print("starting nats-server and the stt, llm, tts workers (loading models)...", flush=True)
    t0 = time.monotonic()
    try:
        await loop.start()
        print(f"ready in {time.monotonic() - t0:.1f} s", flush=True)
        caller = await loop.caller(f"demo-{int(time.time())}")
        print(f"caller speaks {args.wav} ...", flush=True)
        r = await caller.say(Path(args.wav), args.speech_end_ms)
        out = Path(args.out)
        write_wav(out, bytes(r.audio), sample_rate_hz=r.audio_rate_hz)
        _print_turn(r, out)
        if args.json:
            print(json.dumps({"transcript": r.transcript, "reply": r.reply, **r.breakdown()}))
        return 0 if r.reply and r.audio else 1
    finally:
        await loop.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="voxbus demo", description=__doc__)
    ap.add_argument("--wav", default=str(QUESTION))
    ap.add_argument("--speech-end-ms", type=float, default=QUESTION_SPEECH_END_MS)
    ap.add_argument("--out", default="agent-answer.wav")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    vlog.configure("warning")
    return asyncio.run(_run(args))
