"""``voxbus demo``: the whole voice loop end to end with a scripted caller in a LiveKit room.

Starts an embedded nats-server, livekit-server (loopback config), the LiveKit bridge and the STT,
LLM and TTS workers; a scripted caller joins a room, speaks a question from a WAV, records the
agent's spoken answer as heard in the room to a WAV, and prints the transcript, the reply and the
latency breakdown measured from the end of the caller's speech.

WebRTC clients ignore loopback, so where it can (root, ``unshare``) the demo re-runs itself inside
a private network namespace (``voxbus.dev.netns``) and nothing touches the machine's network;
elsewhere (a laptop) it runs as is. ``--bus-only`` skips LiveKit: the caller talks to the stages
over the bus.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path

from voxbus.audio import write_wav
from voxbus.dev import netns
from voxbus.dev.livekit_server import (
    LiveKitServerError,
    LiveKitServerMissing,
    livekit_server_binary,
)
from voxbus.dev.loop import VoiceLoop
from voxbus.dev.probes import TurnResult
from voxbus.dev.supervise import LoopError, run_supervised
from voxbus.runtime import logging as vlog

DATA = Path(__file__).with_name("data")
QUESTION = DATA / "question.wav"  # "What time does the museum open?" (espeak-ng)
QUESTION_SPEECH_END_MS = 2545

_LABELS = {
    "guess_ms": "words guessed in the silence (STT)",
    "final_transcript_ms": "final transcript (STT)",
    "end_of_turn_ms": "end of turn (STT)",
    "first_llm_text_ms": "first LLM text",
    "first_tts_audio_ms": "first TTS audio (bus)",
    "caller_first_audio_ms": "first agent audio at the caller",
}


def _print_turn(r: TurnResult, out: Path, speech_end_ms: float) -> None:
    print(f"\nuser said       : {r.transcript!r}")
    print(f"agent answered  : {r.reply!r}")
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


async def _one_call(loop: VoiceLoop, args: argparse.Namespace, region: str, out: Path,
                    tag: str) -> TurnResult:
    """One caller of ``region`` speaks ``--wav``: in a room of its own, or over the bus."""
    if loop.with_livekit:
        room = args.room if args.room and len(loop.regions) == 1 else f"{args.room or 'demo'}-{tag}"
        caller = await loop.room_caller(room, region=region)
        print(f"[{region}] caller joined room {room!r} (session {caller.session}), "
              f"speaks {args.wav} ...", flush=True)
        try:
            return await caller.say(Path(args.wav), args.speech_end_ms, timeout_s=args.timeout)
        finally:
            await caller.close()
    bus_caller = await loop.caller(f"demo-{tag}", region)
    print(f"[{region}] caller speaks {args.wav} over the bus ...", flush=True)
    try:
        return await bus_caller.say(Path(args.wav), args.speech_end_ms, timeout_s=args.timeout)
    finally:
        await bus_caller.close()


async def _run(args: argparse.Namespace) -> int:
    livekit = not args.bus_only
    regions = [r.strip() for r in (args.regions or "").split(",") if r.strip()]
    loop = VoiceLoop(region="demo", regions=regions, livekit=livekit,
                     cluster_size=args.cluster_size if regions else 0)
    what = "nats-server, livekit-server, the bridge and" if livekit else "nats-server and"
    if regions:
        what = (f"a NATS supercluster ({', '.join(regions)}: {args.cluster_size} server(s) "
                f"each), " + ("livekit-server, the bridge and " if livekit else ""))
    print(f"starting {what} the stt, llm, tts workers (loading models)...", flush=True)
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
        for region, r in zip(loop.regions, results, strict=True):
            write_wav(outs[region], bytes(r.audio), sample_rate_hz=r.audio_rate_hz)
            if regions:
                print(f"\n== region {region}")
            _print_turn(r, outs[region], args.speech_end_ms)
            if args.json:
                print(json.dumps({"region": region, "transcript": r.transcript,
                                  "reply": r.reply, **r.breakdown()}))
            failed = failed or not (r.reply and r.audio)
        if failed:
            print("error: no answer came back", file=sys.stderr)
            return 1
        return 0
    finally:
        print("shutting down...", flush=True)
        await loop.stop()


async def _serve_page(loop: VoiceLoop, args: argparse.Namespace) -> int:
    """``--web``: the browser page instead of the scripted caller, until Ctrl-C."""
    from voxbus.services.bridge.dispatch import request_dispatch
    from voxbus.web.server import WebApp

    assert loop.livekit is not None
    nats_url, region = loop.url(), loop.region

    async def dispatch(room: str) -> str:
        reply = await request_dispatch(room, nats_url=nats_url, region=region)
        return "" if reply.ok else reply.error

    lk = loop.livekit
    app = WebApp(lk.url, lk.config.api_key, lk.config.api_secret, dispatch)
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
    ap.add_argument("--wav", default=str(QUESTION), help="what the caller says (PCM16 WAV)")
    ap.add_argument("--speech-end-ms", type=float, default=QUESTION_SPEECH_END_MS,
                    help="where the speech in --wav ends (latencies are measured from there)")
    ap.add_argument("--out", default="agent-answer.wav", help="the agent's answer as heard")
    ap.add_argument("--bus-only", action="store_true",
                    help="no LiveKit: the caller speaks to the stages over the bus")
    ap.add_argument("--no-netns", action="store_true",
                    help="never re-run inside a private network namespace")
    ap.add_argument("--room", help="room name (default: demo-<time>)")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds after the end of speech to wait for the whole answer")
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
    args = ap.parse_args(argv)
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
