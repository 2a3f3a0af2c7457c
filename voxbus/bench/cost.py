"""``voxbus cost``: what a call-minute costs, per stage and in all, on the hardware at hand.

For each stage: how many sessions one worker holds before its latency target breaks, the price
of the instance it runs on per hour, and so ``price / 60 / sessions`` dollars per call-minute.

The sessions a worker holds come from the stage benchmarks' results (``bench/results``, written
by ``voxbus bench stt|llm|tts`` on this machine):

- **measured**, where a benchmark loaded the stage with several sessions at once (the STT's
  levels, the TTS's concurrent sessions): the most sessions whose p50 still met the stage's
  latency target;
- **estimated**, beyond the levels a benchmark ran or where it ran one session at a time (the
  LLM): the sessions whose work fills ``--utilization`` of the worker, from the measured
  service times and a call profile (``--turns-per-min``, ``--agent-speech-s``). A stage whose
  measured levels all met the target takes the larger of the two, and says so.

Prices default to a table (``PRICES``: on-demand list prices of late 2026, assumptions to
override with ``--price stage=DOLLARS_PER_HOUR``); the reference design's figures (STT and TTS
about 180 conversations per GPU, the LLM about 10 per H100, $0.029 a call-minute in all) are
printed beside, priced with the same table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxbus.bench.report import RESULTS_DIR, print_table, write_json
from voxbus.services.llm.settings import LlmSettings

#: Dollars per hour (on-demand list prices, late 2026; override with --price).
PRICES: dict[str, float] = {
    "cpu-2vcpu": 0.085,  # a 2-vCPU general-purpose VM: the machine these figures come from
    "gpu-l4": 0.80,  # an L4 GPU instance
    "gpu-h100": 2.50,  # one H100 GPU
}
#: The reference design: sessions per worker and the instance each stage runs on.
REFERENCE = {"stt": (180, "gpu-l4"), "llm": (10, "gpu-h100"), "tts": (180, "gpu-l4")}
REFERENCE_TOTAL = 0.029
#: Latency targets a worker must keep (p50, ms), per stage.
TARGETS_MS = {"stt": 800.0, "llm": 300.0, "tts": 200.0}


class CostError(ValueError):
    pass


@dataclass(frozen=True)
class Capacity:
    stage: str
    sessions: int
    how: str  # measured / estimated / at least (measured levels all met it)
    detail: str


def _load(name: str, results: Path) -> dict[str, Any]:
    path = results / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise CostError(f"no {path}: run `voxbus bench {name}` first (on this machine)") from None
    except ValueError as e:
        raise CostError(f"{path} is not a benchmark result: {e}") from None
    return data


def _estimate(busy_s_per_min: float, parallel: int, utilization: float) -> int:
    """Sessions whose work fills ``utilization`` of ``parallel`` workers' minutes."""
    if busy_s_per_min <= 0:
        return 0
    return max(1, math.floor(parallel * 60 * utilization / busy_s_per_min))


def _combine(stage: str, measured: list[tuple[int, float]], estimate: int,
             detail: str) -> Capacity:
    """``measured``: (sessions, p50 ms) levels of a benchmark."""
    target = TARGETS_MS[stage]
    ok = [n for n, p50 in sorted(measured) if p50 <= target]
    broke = [n for n, p50 in sorted(measured) if p50 > target]
    if broke:
        held = max([n for n in ok if n < broke[0]], default=0)
        return Capacity(stage, held, "measured",
                        f"p50 over {target:.0f} ms at {broke[0]} session(s); {detail}")
    if ok:
        if estimate > max(ok):
            return Capacity(stage, estimate, "estimated",
                            f"every level measured (up to {max(ok)}) met {target:.0f} ms; "
                            f"{detail}")
        return Capacity(stage, max(ok), "measured", f"met {target:.0f} ms up to {max(ok)}")
    return Capacity(stage, estimate, "estimated", detail)


def capacities(results: Path, *, turns_per_min: float, agent_speech_s: float,
               utilization: float) -> list[Capacity]:
    stt, llm, tts = (_load(n, results) for n in ("stt", "llm", "tts"))
    # STT: a final per turn, and partials while the caller speaks (best effort, counted)
    levels = stt["levels"]
    partials = max((lv["partials_per_turn"] for lv in levels), default=0.0)
    dec = stt["worker"]["decode_p50_ms"]
    stt_busy = turns_per_min * (dec["final"] + partials * dec["partial"]) / 1000
    caps = [_combine("stt", [(lv["sessions"], lv["final_p50_ms"]) for lv in levels],
                     _estimate(stt_busy, 1, utilization),
                     f"{stt_busy:.1f} s of decoding per call-minute")]
    # LLM: a reply per turn on one of the worker's engines (one session at a time measured)
    warm = next(s for s in llm["summary"] if s["kind"] == "warm")
    engines = int(llm["config"].get("engines", 0) or LlmSettings().engines)
    llm_busy = turns_per_min * warm["reply"]["p50_ms"] / 1000
    first_text = warm["first_text"]["p50_ms"]
    caps.append(_combine("llm", [(1, first_text)], _estimate(llm_busy, engines, utilization),
                         f"{llm_busy:.1f} s of generation per call-minute on {engines} "
                         "engines"))
    # TTS: the agent's speech at the measured real-time factor
    tts_busy = agent_speech_s * turns_per_min * float(tts["synth_rtf"])
    rows = [(int(r["scenario"].split()[0]), float(r["first_audio_p50_ms"]))
            for r in tts["rows"] if str(r["scenario"]).endswith("concurrent session(s)")]
    caps.append(_combine("tts", rows, _estimate(tts_busy, 1, utilization),
                         f"{tts_busy:.1f} s of synthesis per call-minute"))
    return caps


def cost_rows(caps: Sequence[Capacity], prices: dict[str, float], instance: str
              ) -> list[dict[str, Any]]:
    rows = []
    for c in caps:
        price = prices.get(c.stage, prices[instance])
        per_min = price / 60 / c.sessions if c.sessions else float("inf")
        ref_n, ref_instance = REFERENCE[c.stage]
        rows.append({
            "stage": c.stage, "sessions_per_worker": c.sessions, "how": c.how,
            "dollars_per_hour": price, "dollars_per_call_minute": round(per_min, 6),
            "reference_sessions": ref_n,
            "reference_dollars_per_call_minute": round(prices[ref_instance] / 60 / ref_n, 6),
            "why": c.detail,
        })
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="voxbus cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(RESULTS_DIR), help="where the benchmarks wrote")
    ap.add_argument("--instance", default="cpu-2vcpu", choices=sorted(PRICES),
                    help="what the stages run on (the benchmarks' machine)")
    ap.add_argument("--price", action="append", default=[], metavar="KEY=DOLLARS",
                    help="a price per hour: an instance of the table or a stage (stt=0.12)")
    ap.add_argument("--turns-per-min", type=float, default=6.0)
    ap.add_argument("--agent-speech-s", type=float, default=4.0,
                    help="seconds the agent speaks per turn")
    ap.add_argument("--utilization", type=float, default=0.7,
                    help="the share of a worker its sessions may keep busy")
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    prices = dict(PRICES)
    try:
        for item in args.price:
            key, _, value = item.partition("=")
            try:
                prices[key.strip()] = float(value)
            except ValueError:
                raise CostError(f"--price {item!r}: not KEY=DOLLARS_PER_HOUR") from None
        if not 0 < args.utilization <= 1:
            raise CostError("--utilization must be within (0, 1]")
        caps = capacities(Path(args.results), turns_per_min=args.turns_per_min,
                          agent_speech_s=args.agent_speech_s, utilization=args.utilization)
    except (CostError, KeyError, StopIteration) as e:
        print(f"voxbus cost: {e}", file=sys.stderr)
        return 2
    rows = cost_rows(caps, prices, args.instance)
    total = sum(r["dollars_per_call_minute"] for r in rows)
    ref_total = sum(r["reference_dollars_per_call_minute"] for r in rows)
    top = max(rows, key=lambda r: r["dollars_per_call_minute"])
    print_table(f"a call-minute on {args.instance} workers (prices per hour: "
                f"{', '.join(f'{k} ${v:g}' for k, v in prices.items())})",
                [{k: (f"${v:.6f}" if k.startswith(("dollars", "reference_dollars")) else v)
                  for k, v in r.items() if k != "why"} for r in rows])
    for r in rows:
        print(f"  {r['stage']}: {r['how']}: {r['why']}")
    print("  (these are this project's small models: tiny.en, SmolLM2-135M and Piper on CPU;"
          " the reference design's are larger and run on GPUs)")
    print(f"\ntotal ${total:.4f} a call-minute here; the reference design says ${REFERENCE_TOTAL}"
          f" (its capacities priced with this table: ${ref_total:.4f}, so the rest of its "
          f"figure is what this table does not price). {top['stage'].upper()} dominates: "
          f"{100 * top['dollars_per_call_minute'] / total:.0f} % of the total.")
    write_json("cost", {"instance": args.instance, "prices": prices, "rows": rows,
                        "total_dollars_per_call_minute": round(total, 6),
                        "reference_total": REFERENCE_TOTAL, "dominant": top["stage"],
                        "profile": {"turns_per_min": args.turns_per_min,
                                    "agent_speech_s": args.agent_speech_s,
                                    "utilization": args.utilization}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
