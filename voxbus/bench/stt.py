"""STT stage benchmark: speech fixtures streamed in real time (20 ms frames) through a real
nats-server into the real STT worker (its own process, as in production), at 1-4 concurrent
sessions.

    python -m voxbus.bench.stt [--levels 1,2,3,4] [--rounds 2] [--no-partials] [--partial-nice N]

Reports, per number of sessions:
- end of speech (the fixture's true end) -> final transcript received: p50/p95;
- end of speech -> turn end detected on the audio timeline (``EndOfTurn.at_ns``: the floor that
  the silence window and the VAD's hangover set before any decoding);
- speech onset -> ``UserStartedSpeaking`` received;
- partial cadence (ms between a turn's partials received) and partials per turn;
- decode time of the finals, and word errors against the fixture text;
and the real-time factor of a decode measured in the worker before the load (nothing else
running in it), and how many sessions one worker holds before the p50 final latency doubles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from voxbus.bench.report import percentile, print_table, summary_ms, write_json
from voxbus.contracts.messages import (
    AudioIn,
    EndOfTurn,
    Transcript,
    UserStartedSpeaking,
    ends_turn,
)
from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime.bus import Bus
from voxbus.runtime.procs import stop_process

REGION = "bench"
PARTITIONS = 8
FRAME_MS = 20
SPEECH_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "speech"
TARGET_P50_MS = 400.0


@dataclass(frozen=True)
class Fixture:
    name: str
    text: str
    pcm: bytes  # 16 kHz mono PCM16
    speech_start_ms: int
    speech_end_ms: int


def load_fixtures() -> list[Fixture]:
    from voxbus.audio import read_wav

    manifest = json.loads((SPEECH_DIR / "manifest.json").read_text())
    out = []
    for item in manifest["items"]:
        wav = read_wav(SPEECH_DIR / item["file"])
        assert (wav.sample_rate_hz, wav.channels) == (16_000, 1)
        out.append(Fixture(item["file"].removesuffix(".wav"), item["text"], wav.pcm,
                           item["speech_start_ms"], item["speech_end_ms"]))
    return out


class Clock:
    """Wall-clock nanoseconds from the monotonic clock (one offset, taken once)."""

    def __init__(self) -> None:
        self._wall = time.time_ns()
        self._mono = time.monotonic_ns()

    def now_ns(self) -> int:
        return self._wall + time.monotonic_ns() - self._mono

    def mono_s(self, wall_ns: int) -> float:
        return (wall_ns - self._wall + self._mono) / 1e9


# ---- the worker process ---------------------------------------------------------------------


async def _worker(url: str) -> None:
    import numpy as np

    from voxbus.audio import pcm16_to_float32
    from voxbus.runtime import logging as vlog
    from voxbus.runtime.worker import Worker
    from voxbus.services.stt.settings import SttSettings
    from voxbus.services.stt.stage import SttStage

    vlog.configure("warning")
    bus = await Bus.connect(url, regions=[REGION], partitions=PARTITIONS, name="bench-stt")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    settings = SttSettings.from_env()
    stage = SttStage(settings)
    started = time.perf_counter()
    worker = Worker(bus, stage)
    await worker.start()
    start_s = time.perf_counter() - started
    rtf: dict[str, list[float]] = {"final": [], "partial": []}
    decode_ms: dict[str, list[float]] = {"final": [], "partial": []}
    for fx in load_fixtures():  # the span a final decodes: pre-roll .. end of speech + 100 ms
        audio = pcm16_to_float32(fx.pcm)[16 * (fx.speech_start_ms - 200) : 16 * (
            fx.speech_end_ms + 100)]
        for _ in range(2):
            for mode in ("final", "partial"):
                r = await asyncio.to_thread(stage.engine.transcribe, np.asarray(audio),
                                            partial=mode == "partial")
                rtf[mode].append(r.decode_s / r.audio_s)
                decode_ms[mode].append(r.decode_s * 1000)
    info = {
        "start_s": round(start_s, 3),
        "rtf_p50": {k: round(statistics.median(v), 4) for k, v in rtf.items()},
        "decode_p50_ms": {k: round(statistics.median(v), 1) for k, v in decode_ms.items()},
    }
    print("ready " + json.dumps(info), flush=True)
    await stop.wait()
    await worker.stop()
    await bus.close()


# ---- the load -------------------------------------------------------------------------------


@dataclass
class Play:
    session: str
    fixture: Fixture
    start_ns: int  # audio-timeline (= wall clock) time of the fixture's first sample

    @property
    def speech_start_ns(self) -> int:
        return self.start_ns + self.fixture.speech_start_ms * 1_000_000

    @property
    def speech_end_ns(self) -> int:
        return self.start_ns + self.fixture.speech_end_ms * 1_000_000


@dataclass
class Level:
    sessions: int
    plays: list[Play] = field(default_factory=list)
    got: list[tuple[int, Any]] = field(default_factory=list)  # (received ns, message)


async def _play_session(bus: Bus, clock: Clock, level: Level, name: str,
                        fixtures: list[Fixture], delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    t0 = clock.now_ns()
    t0_mono = time.monotonic()
    pos_ns, seq = 0, 0
    frame_bytes = 16_000 * FRAME_MS // 1000 * 2
    for fx in fixtures:
        level.plays.append(Play(name, fx, t0 + pos_ns))
        for off in range(0, len(fx.pcm), frame_bytes):
            chunk = fx.pcm[off : off + frame_bytes]
            # a microphone: the frame is sent once it has been captured
            due = t0_mono + (pos_ns + len(chunk) // 2 * 62_500) / 1e9
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await bus.publish(REGION, AudioIn(session=name, seq=seq, sample_rate_hz=16_000,
                                              capture_ns=t0 + pos_ns, pcm=chunk))
            seq += 1
            pos_ns += len(chunk) // 2 * 62_500  # 16 kHz: 62.5 us a sample


async def _run_level(bus: Bus, clock: Clock, fixtures: list[Fixture], n: int, rounds: int,
                     run_id: str) -> Level:
    level = Level(n)

    async def on(raw: Msg) -> None:
        level.got.append((clock.now_ns(), await bus.read(raw.subject, raw.data)))

    subs = [await bus.nc.subscribe(f"voxbus.{REGION}.*.{kind}", cb=on)
            for kind in ("stt.transcript", "ctl.turn", "ctl.speech")]
    cycle_s = statistics.mean(len(f.pcm) / 32_000 for f in fixtures)
    sessions = []
    for i in range(n):
        order = fixtures[i % len(fixtures):] + fixtures[: i % len(fixtures)]
        name = f"{run_id}-n{n}-s{i}"
        sessions.append(_play_session(bus, clock, level, name, order * rounds, i * cycle_s / n))
    await asyncio.gather(*sessions)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and sum(
        ends_turn(m) for _, m in level.got
    ) < len(level.plays):
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    for sub in subs:
        await sub.unsubscribe()
    return level


def _summarise(level: Level) -> dict[str, Any]:
    from voxbus.services.stt.normalize import word_errors

    final_lat, detect_lat, start_lat, cadence, decode_ms, errors = [], [], [], [], [], []
    partials_per_turn: list[int] = []
    unmatched = 0
    by_session: dict[str, list[Play]] = {}
    for p in level.plays:
        by_session.setdefault(p.session, []).append(p)
    got_at = {id(m): t for t, m in level.got}
    for t_recv, msg in level.got:
        if not isinstance(msg, Transcript) or not msg.is_final:
            continue
        plays = by_session.get(msg.session, [])
        play = min(plays, key=lambda p: abs(p.speech_start_ns - msg.speech_start_ns), default=None)
        if play is None or abs(play.speech_start_ns - msg.speech_start_ns) > 300_000_000:
            unmatched += 1
            continue
        final_lat.append((t_recv - play.speech_end_ns) / 1e9)
        decode_ms.append(msg.decode_ms)
        errors.append(word_errors(play.fixture.text, msg.text))
        eot = next((m for _, m in level.got if isinstance(m, EndOfTurn) and ends_turn(m)
                    and m.session == msg.session and m.turn == msg.turn), None)
        if eot is not None:
            detect_lat.append((eot.at_ns - play.speech_end_ns) / 1e9)
        uss = next((m for _, m in level.got if isinstance(m, UserStartedSpeaking)
                    and m.session == msg.session and m.turn == msg.turn), None)
        if uss is not None:
            start_lat.append((got_at[id(uss)] - play.speech_start_ns) / 1e9)
        arrivals = sorted(t for t, m in level.got if isinstance(m, Transcript)
                          and not m.is_final and m.session == msg.session and m.turn == msg.turn)
        partials_per_turn.append(len(arrivals))
        cadence += [(b - a) / 1e9 for a, b in zip(arrivals, arrivals[1:], strict=False)]
    final = summary_ms(final_lat)
    return {
        "sessions": level.sessions,
        "turns": len(level.plays),
        "finals": len(final_lat),
        "final_p50_ms": final["p50_ms"],
        "final_p95_ms": final["p95_ms"],
        "turn_end_p50_ms": summary_ms(detect_lat)["p50_ms"],
        "started_p50_ms": summary_ms(start_lat)["p50_ms"],
        "partial_gap_p50_ms": summary_ms(cadence)["p50_ms"],
        "partial_gap_p95_ms": summary_ms(cadence)["p95_ms"],
        "partials_per_turn": round(statistics.mean(partials_per_turn), 2)
        if partials_per_turn else 0.0,
        "decode_p50_ms": round(percentile(decode_ms, 50), 1),
        "word_errors": sum(errors),
        "unmatched": unmatched,
    }


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    fixtures = load_fixtures()
    server = await asyncio.to_thread(EmbeddedNats().start)
    proc: asyncio.subprocess.Process | None = None
    env = {**os.environ, "STT_PARTIALS": "off" if args.no_partials else "on",
           "STT_PARTIAL_NICE": str(args.partial_nice),
           "STT_SPECULATIVE_SILENCE_MS": str(args.speculative_silence_ms)}
    try:
        bus = await Bus.connect(server.url, regions=[REGION], partitions=PARTITIONS,
                                name="bench-load")
        await bus.provision()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voxbus.bench.stt", "--worker", server.url,
            stdout=asyncio.subprocess.PIPE, env=env,
        )
        assert proc.stdout is not None
        line = (await proc.stdout.readline()).decode()
        if not line.startswith("ready "):
            raise RuntimeError("bench worker did not start")
        worker_info = json.loads(line.removeprefix("ready "))
        clock = Clock()
        run_id = f"r{os.getpid()}"
        rows = []
        load_before = os.getloadavg()[0]
        for n in args.levels:
            rows.append(_summarise(await _run_level(bus, clock, fixtures, n, args.rounds,
                                                    run_id)))
            print(f"  {n} session(s): final p50 {rows[-1]['final_p50_ms']} ms", flush=True)
        await bus.close()
    finally:
        await stop_process(proc, 30)
        server.stop()
    base = rows[0]["final_p50_ms"] if rows and rows[0]["sessions"] == 1 else None
    held = None
    if base is not None:
        held = max((r["sessions"] for r in rows if r["final_p50_ms"] <= 2 * base), default=None)
    return {
        "model": os.environ.get("STT_MODEL", "tiny.en"),
        "partials": not args.no_partials,
        "partial_nice": args.partial_nice,
        "speculative_silence_ms": args.speculative_silence_ms,
        "rounds": args.rounds,
        "frame_ms": FRAME_MS,
        "fixtures": [f.name for f in fixtures],
        "worker": worker_info,
        "levels": rows,
        "sessions_before_latency_doubles": held,
        "target_final_p50_ms": TARGET_P50_MS,
        "target_met": base is not None and base <= TARGET_P50_MS,
        "loadavg_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m voxbus.bench.stt")
    ap.add_argument("--levels", default="1,2,3,4",
                    type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--rounds", type=int, default=2, help="times each session plays the fixtures")
    ap.add_argument("--no-partials", action="store_true")
    ap.add_argument("--partial-nice", type=int, default=19,
                    help="0: partials share the finals' engine (skipped while it decodes)")
    ap.add_argument("--speculative-silence-ms", type=int, default=0)
    ap.add_argument("--out", default="stt", help="result name under bench/results/")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        asyncio.run(_worker(args.worker))
        return 0
    result = asyncio.run(_run(args))
    w = result["worker"]
    print_table("decode in the worker, alone (tiny.en unless STT_MODEL)", [
        {"mode": m, "decode_p50_ms": w["decode_p50_ms"][m], "rtf_p50": w["rtf_p50"][m]}
        for m in ("final", "partial")
    ])
    print_table("end of speech -> final transcript, fixtures streamed in real time (ms)",
                result["levels"])
    print(f"sessions before the p50 final latency doubles: "
          f"{result['sessions_before_latency_doubles']}; target p50 <= {TARGET_P50_MS:.0f} ms "
          f"at 1 session: {'met' if result['target_met'] else 'NOT met'}; "
          f"load average {result['loadavg_1m']}")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
