"""Fault benchmark: the scenarios of ``tests/faults`` (real nats-server, real models, two replicas
per stage), each run for its numbers: the gap the caller waits or hears, turns lost, duplicates
(a scenario whose checks fail is reported as failed, with no numbers).

    voxbus bench faults [--timings ttl,ack_wait,tick,margin,expires] [-k EXPR]
    voxbus bench faults --regions     # tests/regions: a supercluster, the whole loop


Runs from a checkout (the scenarios are the tests). ``--timings`` sets the lease and ack timings
(``VOXBUS_LEASE_TTL_S`` ...) for one run, to see what shorter ones buy. Writes
``bench/results/faults.json`` (``faults-regions.json`` with ``--regions``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from voxbus.bench.report import print_table, write_json

ROOT = Path(__file__).resolve().parents[2]
TIMING_VARS = ("VOXBUS_LEASE_TTL_S", "VOXBUS_ACK_WAIT_S", "VOXBUS_LEASE_TICK_S",
               "VOXBUS_LEASE_FENCE_MARGIN_S", "VOXBUS_PULL_EXPIRES_S")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxbus bench faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timings", help="ttl,ack_wait,tick,margin,expires in seconds")
    p.add_argument("-k", default="", help="only the scenarios pytest -k selects")
    p.add_argument("--regions", action="store_true",
                   help="the region scenarios instead (tests/regions: residency, purge, a "
                        "server killed, a gateway cut, on a supercluster)")
    args = p.parse_args(argv)
    suite, name = ("tests/regions", "faults-regions") if args.regions else ("tests/faults",
                                                                           "faults")
    if not (ROOT / suite).is_dir():
        print(f"voxbus bench faults: run it from a checkout (needs {suite})", file=sys.stderr)
        return 2
    env = dict(os.environ)
    timings: dict[str, str] = {}
    if args.timings:
        values = args.timings.split(",")
        if len(values) != len(TIMING_VARS):
            print("voxbus bench faults: --timings takes five numbers", file=sys.stderr)
            return 2
        timings = dict(zip(TIMING_VARS, values, strict=True))
        env.update(timings)
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as f:
        report = Path(f.name)
    env["VOXBUS_FAULTS_REPORT"] = str(report)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", suite,
           "-o", "addopts=", *(["-k", args.k] if args.k else [])]
    print("running the fault scenarios (real processes; a few minutes)...", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
    rows: list[dict[str, Any]] = [json.loads(line) for line in report.read_text().splitlines()]
    report.unlink(missing_ok=True)
    print_table("faults (gap in seconds)", [
        {k: r[k] for k in ("scenario", "gap_s", "turns_lost", "duplicates")} for r in rows])
    if proc.returncode:
        print(f"some scenarios failed their checks (pytest exit {proc.returncode}): "
              "they are missing from the table")
    write_json(name, {"timings": timings or "defaults", "rows": rows,
                          "all_passed": proc.returncode == 0})
    return proc.returncode
