"""``voxbus transcripts``: the users' final transcripts (and, with ``--agent``, the agent's
replies) of a region, for analytics, read as the analytics identity.

Text is personal data: what this prints is what people said. It reads the region's text stream
through a durable consumer (``analytics-<n>``, ``--reader``), acking what it printed, so a reader
started again resumes where it stopped; ``--since`` (``2026-12-01T10:00:00Z``, or ``15m``,
``2h``: that long ago) starts it over from then. ``--session`` keeps one session. Without
``--follow`` it stops once it has caught up. Purges are honoured: the purge service's
announcement (the tombstone subject) is printed as a purge event, and nothing of that session is
printed after it; a session purged before the reader got to it is gone from the stream.

Output: ``HH:MM:SS <session> <turn> user|agent: text``, or with ``--jsonl`` one JSON object a
line: ``{"event": "transcript", "at", "region", "session", "turn", "speaker", "text"}`` and
``{"event": "purged", "region", "session", "at"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import TextIO

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from voxbus.contracts import streams
from voxbus.contracts.messages import AnyMessage, ReplyEnd, Transcript
from voxbus.contracts.sealing import SealError
from voxbus.contracts.subjects import PREFIX, Kind, check_region, check_session, tombstone_subject
from voxbus.ops.auth import ANALYTICS_CONSUMERS
from voxbus.runtime import logging as vlog
from voxbus.runtime.bus import Bus
from voxbus.runtime.settings import BusSettings, SettingsError

_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    if m := _RELATIVE.match(text.strip()):
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SettingsError(f"--since {text!r}: an ISO time (2026-12-01T10:00:00Z) or an age "
                            "such as 15m, 2h, 1d") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def filters(region: str, session: str | None, agent: bool) -> list[str]:
    who = check_session(session) if session else "*"
    kinds = [Kind.TRANSCRIPT, *([Kind.REPLY] if agent else [])]
    return [f"{PREFIX}.{region}.*.{who}.{k.value}" for k in kinds]


class Printer:
    def __init__(self, region: str, out: TextIO, *, jsonl: bool) -> None:
        self.region = region
        self.out = out
        self.jsonl = jsonl
        self.purged: set[str] = set()
        self.printed = 0

    def _write(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def message(self, msg: AnyMessage, stored_at: datetime | None) -> None:
        if msg.session in self.purged:
            return
        if isinstance(msg, Transcript) and msg.is_final and msg.text.strip():
            speaker, text = "user", msg.text
        elif isinstance(msg, ReplyEnd) and msg.text.strip():
            speaker, text = "agent", msg.text
        else:
            return
        at = stored_at or datetime.now(UTC)
        self.printed += 1
        if self.jsonl:
            self._write(json.dumps({"event": "transcript", "at": at.isoformat(),
                                    "region": self.region, "session": msg.session,
                                    "turn": msg.turn, "speaker": speaker, "text": text}))
        else:
            self._write(f"{at.astimezone(UTC):%H:%M:%S} {msg.session} {msg.turn} "
                        f"{speaker}: {text}")

    def purge(self, session: str) -> None:
        if session in self.purged:
            return
        self.purged.add(session)
        if self.jsonl:
            self._write(json.dumps({"event": "purged", "region": self.region,
                                    "session": session, "at": datetime.now(UTC).isoformat()}))
        else:
            self._write(f"-- session {session} purged: its transcripts are to be erased")


async def _consumer(bus: Bus, stream: str, name: str, subjects: list[str],
                    since: datetime | None) -> None:
    """The durable reader, made (or made again: a new start, or other filters) as asked."""
    try:
        info = await bus.js.consumer_info(stream, name)
    except NotFoundError:
        info = None
    if info is not None:
        have = sorted(info.config.filter_subjects or
                      ([info.config.filter_subject] if info.config.filter_subject else []))
        if since is None and have == sorted(subjects):
            return  # resume where it stopped
        print(f"voxbus transcripts: starting reader {name} over "
              f"({'from ' + since.isoformat() if since else 'other filters'})", file=sys.stderr)
        await bus.js.delete_consumer(stream, name)
    config = ConsumerConfig(
        durable_name=name, ack_policy=AckPolicy.EXPLICIT, filter_subjects=subjects,
        deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL,
        opt_start_time=since,
        max_ack_pending=1000, inactive_threshold=None,
    )
    await bus.js.add_consumer(stream, config=config)


def _stored_at(msg: Msg) -> datetime | None:
    with contextlib.suppress(Exception):
        ts = msg.metadata.timestamp
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    return None


async def read(bus: Bus, region: str, printer: Printer, *, reader: int, session: str | None,
               since: datetime | None, agent: bool, follow: bool) -> None:
    stream = streams.text_stream(region)
    name = ANALYTICS_CONSUMERS[reader]

    async def on_tombstone(m: Msg) -> None:
        with contextlib.suppress(UnicodeDecodeError):
            purged = m.data.decode()
            if session is None or purged == session:
                printer.purge(purged)

    tomb = await bus.nc.subscribe(tombstone_subject(region), cb=on_tombstone)
    sub: JetStreamContext.PullSubscription | None = None
    try:
        await _consumer(bus, stream, name, filters(region, session, agent), since)
        sub = await bus.js.pull_subscribe_bind(name, stream)
        while True:
            try:
                batch = await sub.fetch(100, timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                if follow:
                    continue
                return
            for m in batch:
                try:  # opened with the session's key (``contracts.sealing``)
                    msg = await bus.read(m.subject, m.data)
                except (msgspec.DecodeError, msgspec.ValidationError, SealError):
                    pass  # not a message, or its session was purged (its key is gone)
                else:
                    printer.message(msg, _stored_at(m))
                await m.ack()
    finally:
        # Both go before the bus drains: a pull subscription's inbox keeps the server's
        # "no messages" answers queued for nobody, and the drain waited its full 10 s on them.
        for s in (sub, tomb):
            with contextlib.suppress(Exception):
                if s is not None:
                    await s.unsubscribe()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="voxbus transcripts",
        description="Print the users' final transcripts (personal data: what people said) "
                    "of a region, as the analytics identity; see voxbus/ops/transcripts.py.")
    ap.add_argument("--region", help="the region (default: VOXBUS_REGIONS or the identity's)")
    ap.add_argument("--session", help="one session only")
    ap.add_argument("--since", help="start over from this time (ISO) or age (15m, 2h, 1d)")
    ap.add_argument("--follow", action="store_true", help="keep printing new ones")
    ap.add_argument("--jsonl", action="store_true", help="one JSON object a line")
    ap.add_argument("--agent", action="store_true", help="the agent's replies too")
    ap.add_argument("--reader", type=int, default=0,
                    help=f"which durable reader (0-{len(ANALYTICS_CONSUMERS) - 1}): each resumes "
                         "where it stopped")
    args = ap.parse_args(argv)
    vlog.configure("warning")  # stdout is the feed: logs go to stderr
    if not 0 <= args.reader < len(ANALYTICS_CONSUMERS):
        raise SettingsError(f"--reader must be 0-{len(ANALYTICS_CONSUMERS) - 1}")
    since = parse_since(args.since) if args.since else None
    settings = BusSettings.from_env()
    settings.require_role("analytics", "operator")
    try:
        region = check_region(args.region or settings.regions[0])
    except ValueError as e:
        raise SettingsError(str(e)) from None
    if region not in settings.regions:
        raise SettingsError(f"region {region!r} is not served here (VOXBUS_REGIONS="
                            f"{','.join(settings.regions)})")
    if args.session:
        try:
            check_session(args.session)
        except ValueError as e:
            raise SettingsError(str(e)) from None
    printer = Printer(region, sys.stdout, jsonl=args.jsonl)

    async def run() -> None:
        from voxbus.runtime.serve import connect

        bus = await connect(settings, name="voxbus-transcripts")
        try:
            await read(bus, region, printer, reader=args.reader, session=args.session,
                       since=since, agent=args.agent, follow=args.follow)
        finally:
            await bus.close()

    started = time.monotonic()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    if not args.jsonl and not args.follow:
        print(f"({printer.printed} printed in {time.monotonic() - started:.1f} s)",
              file=sys.stderr)
    return 0
