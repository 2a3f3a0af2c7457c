"""Cold start: from a stage process's start to the first message it handles, each stage started
alone, as KEDA starts one from zero: the stage's durable consumers exist already (a replica made
them before it scaled down) and a message of its input waits in them. The figure ends when the
message reaches the stage's handler, its model loaded and warm (``first_message_started``);
how long the handling itself took (a whole reply, for the LLM) is reported beside it.

    voxbus bench coldstart [--runs 3] [--stages stt,llm,tts,bridge]

The bridge's figure is from its start to its answer to a dispatch request (it joins a room of a
real livekit-server, in a private network namespace where it can, as the demo does). Prints the
median of the runs per stage and the phases the process logged (imports, model load, warm-up,
worker started); writes ``bench/results/coldstart.json`` with ``stt_s``, ``llm_s``, ``tts_s``,
``bridge_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from typing import Any

from voxbus.audio import read_wav
from voxbus.bench.report import print_table, write_json
from voxbus.contracts.messages import AudioIn, EndOfTurn, Message, ReplyEnd, ReplyText
from voxbus.dev import netns
from voxbus.dev.supervise import ChildProcess, LoopError, run_supervised
from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime import logging as vlog
from voxbus.runtime.bus import Bus
from voxbus.runtime.stage import SessionPolicy
from voxbus.runtime.worker import Worker

REGION = "cold"
STAGES = ("stt", "llm", "tts", "bridge")
#: Phases a stage logs on its way up, in order (what the seconds went to).
PHASES = ("stt_started", "llm_loaded", "tts_ready", "worker_started", "bridge_started")


class _Inputs:
    """A stage's name and inputs as its class declares them (to make its consumers)."""

    def __init__(self, stage: str) -> None:
        if stage == "stt":
            from voxbus.services.stt.stage import SttStage as cls
        elif stage == "llm":
            from voxbus.services.llm.stage import LlmStage as cls  # type: ignore[assignment]
        else:
            from voxbus.services.tts.stage import TtsStage as cls  # type: ignore[assignment]
        self.name = cls.name
        self.inputs = cls.inputs
        self.urgent = cls.urgent
        self.policy = SessionPolicy()


def _waiting(stage: str, session: str) -> list[Message]:
    """What waits for the stage: 0.4 s of the demo's question, a turn, a reply."""
    if stage == "stt":
        from voxbus.dev.demo import QUESTION

        w = read_wav(QUESTION)
        step = w.sample_rate_hz * w.channels * 2 // 50
        return [AudioIn(session=session, seq=i, sample_rate_hz=w.sample_rate_hz,
                        channels=w.channels, capture_ns=time.time_ns(),
                        pcm=w.pcm[i * step:(i + 1) * step]) for i in range(20)]
    if stage == "llm":
        return [EndOfTurn(session=session, turn=1, transcript="What time does the museum open?",
                          speech_start_ns=1, speech_end_ns=2)]
    text = "Sure, I can help."
    return [ReplyText(session=session, turn=1, seq=0, text=text, char_start=0,
                      char_end=len(text)),
            ReplyEnd(session=session, turn=1, text=text)]


async def _stage_once(stage: str, run: int) -> dict[str, Any]:
    server = await asyncio.to_thread(EmbeddedNats().start)
    proc: ChildProcess | None = None
    try:
        bus = await Bus.connect(server.url, regions=[REGION], name="coldstart")
        await bus.provision()
        await Worker(bus, _Inputs(stage)).ensure_consumers(REGION)  # type: ignore[arg-type]
        for msg in _waiting(stage, f"cold{run}"):
            await bus.publish(REGION, msg, ack=True)
        await bus.close()
        env = {**os.environ, "NATS_URL": server.url, "VOXBUS_REGIONS": REGION}
        proc = ChildProcess(stage, env, echo=False, ready="first_message_started")
        await proc.start()
        await proc.wait_ready(120)
        deadline = time.monotonic() + 60
        while "first_message_handled" not in proc.events and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        handled = proc.events.get("first_message_handled")
        return {"stage": stage, "run": run, "cold_s": round(proc.ready_s, 3),
                "handled_s": None if handled is None else round(handled, 3),
                **{p: round(t, 3) for p, t in proc.events.items() if p in PHASES}}
    finally:
        if proc is not None:
            await proc.stop()
        server.stop()


async def _bridge_once(run: int) -> dict[str, Any]:
    from voxbus.dev.livekit_server import LiveKitServer
    from voxbus.services.bridge.dispatch import request_dispatch

    server = await asyncio.to_thread(EmbeddedNats().start)
    lk = await asyncio.to_thread(LiveKitServer.local(node_ip=netns.node_ip()).start)
    proc: ChildProcess | None = None
    try:
        bus = await Bus.connect(server.url, regions=[REGION], name="coldstart")
        await bus.provision()
        await bus.close()
        env = {**os.environ, "NATS_URL": server.url, "VOXBUS_REGIONS": REGION,
               "BRIDGE_REGION": REGION, "BRIDGE_LIVEKIT_URL": lk.url,
               "BRIDGE_API_KEY": lk.config.api_key, "BRIDGE_API_SECRET": lk.config.api_secret}
        proc = ChildProcess("bridge", env, echo=False, ready="bridge_started")
        await proc.start()
        while True:  # as an operator would: ask until a bridge answers
            reply = await request_dispatch(f"cold-{run}", nats_url=server.url, region=REGION,
                                           timeout_s=10)
            if reply.ok:
                break
            if "no bridge" not in reply.error:
                raise LoopError(f"the bridge refused: {reply.error}")
            if proc.proc is not None and proc.proc.returncode is not None:
                raise LoopError("the bridge exited: " + " | ".join(proc.last_lines[-3:]))
            await asyncio.sleep(0.02)
        cold = time.monotonic() - proc.started_at
        return {"stage": "bridge", "run": run, "cold_s": round(cold, 3),
                **{p: round(t, 3) for p, t in proc.events.items() if p in PHASES}}
    finally:
        if proc is not None:
            await proc.stop()
        await asyncio.to_thread(lk.stop)
        server.stop()


async def _run(stages: list[str], runs: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for stage in stages:
        for run in range(runs):
            row = await (_bridge_once(run) if stage == "bridge" else _stage_once(stage, run))
            rows.append(row)
            print(f"  {stage} run {run + 1}: {row['cold_s']:.2f} s", flush=True)
    medians = {f"{s}_s": round(statistics.median(r["cold_s"] for r in rows if r["stage"] == s),
                               3) for s in stages}
    return {**medians, "runs": runs, "target_s": 2.0, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="voxbus bench coldstart", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stages", default=",".join(STAGES))
    args = ap.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if bad := [s for s in stages if s not in STAGES]:
        ap.error(f"unknown stage(s) {', '.join(bad)}: choose from {', '.join(STAGES)}")
    if "bridge" in stages:  # the bridge joins a LiveKit room: WebRTC needs a namespace here
        rc = run_supervised("voxbus.bench.coldstart", argv, want_netns=True, no_netns=False)
        if rc is not None:
            return rc
    vlog.configure("warning")
    print(f"cold start, each stage alone, {args.runs} run(s) each...", flush=True)
    result = asyncio.run(_run(stages, args.runs))
    print_table("cold start: process start to the first message handled (s)", [
        {"stage": s, "median_s": result[f"{s}_s"], "target_s": 2.0,
         "met": result[f"{s}_s"] <= 2.0} for s in stages])
    write_json("coldstart", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
