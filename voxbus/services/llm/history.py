"""Conversation state on the bus: one msgspec value per session in the region's state bucket.

The key is ``<session>.llm`` (so a purge of ``<session>.>`` erases it). Every change is a
compare-and-set on the key's revision, retried on conflict, so two writers (the turn's handler and
an ``AgentSpoke`` handled outside the session's lane) never lose each other's update.

The history is a list of turns, each with the user's words and the reply's messages (assistant
text, tool calls and tool results, exactly as generated, so the next prompt renders the same tokens
and the engine reuses its cache). ``spoken`` records how much of an interrupted reply the user
heard; the reply is cut there whichever of the two writes lands first. The history is bounded:
past ``max_turns`` or ``max_chars`` the oldest turns go, down to half the limits at once, so the
prompt prefix (and the engine's cache) changes rarely rather than every turn. The cut is made
when a reply is saved, for the turn to come (and when a turn begins, if the user's words cross a
limit), so the stage can have the engine read the shorter conversation before that turn asks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from voxbus.contracts.control import LLM_STATE, state_key
from voxbus.runtime.ports import KeyValueStore
from voxbus.services.llm.engine import ChatMessage

_CAS_ATTEMPTS: Final = 16


class TurnRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    turn: int
    user: str
    reply: list[ChatMessage] = msgspec.field(default_factory=list)
    #: Characters of the reply the user heard before barging in; None: all of it.
    spoken: int | None = None
    #: The bridge said what the user heard of the reply (``AgentSpoke``): it is no longer
    #: playing. False from the turn's start until then; None in a record older than the field.
    heard: bool | None = None


class History(msgspec.Struct, kw_only=True, omit_defaults=True):
    v: int = 1
    turns: list[TurnRecord] = msgspec.field(default_factory=list)

    def messages(self) -> list[ChatMessage]:
        """The conversation as chat messages (without the system prompt)."""
        out: list[ChatMessage] = []
        for record in self.turns:
            if record.turn or record.user:  # turn 0: the agent's greeting, before any words
                out.append({"role": "user", "content": record.user})
            out.extend(record.reply)
        return out

    def find(self, turn: int) -> TurnRecord | None:
        for record in self.turns:
            if record.turn == turn:
                return record
        return None

    def reply_playing(self, before: int) -> bool:
        """The agent's last reply before turn ``before`` may still be playing to the user: it
        has words, and the bridge has not said yet what of it was heard (``AgentSpoke``)."""
        last = max((r for r in self.turns if 0 < r.turn < before), key=lambda r: r.turn,
                   default=None)
        return last is not None and last.heard is False and bool(reply_text(last.reply))


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(History)


# ---- reply text: the joining rule behind the stage's published offsets ------------------------


def needs_space(before: str, after: str) -> bool:
    """Text of two model rounds (before and after a tool call) is joined with one space."""
    return bool(before) and bool(after) and not before[-1].isspace() and not after[0].isspace()


def reply_text(reply: Sequence[ChatMessage]) -> str:
    """The reply as the user hears it: the assistant contents joined (tool traffic is silent)."""
    text = ""
    for message in reply:
        content = message.get("content") or ""
        if message["role"] == "assistant" and content:
            text += (" " if needs_space(text, content) else "") + content
    return text


def truncate_reply(reply: Sequence[ChatMessage], char_end: int) -> list[ChatMessage]:
    """The reply cut after its first ``char_end`` characters of text: the assistant's words are
    kept up to the cut (the message the cut falls in keeps its heard text), its words after the
    cut go, and its tool calls and their results stay wherever they fall: what a tool did
    happened whether or not the caller heard the words around it."""
    out: list[ChatMessage] = []
    text = ""
    cut = False
    for message in reply:
        if message["role"] != "assistant":
            out.append(message)  # a tool's result
            continue
        content = message.get("content") or ""
        calls = message.get("tool_calls")
        kept = content
        if cut:
            kept = ""
        elif content:
            sep = " " if needs_space(text, content) else ""
            start = len(text) + len(sep)
            text += sep + content
            if start >= char_end:
                kept, cut = "", True
            elif len(text) > char_end:
                kept, cut = content[: char_end - start], True
        if kept == content:
            out.append(message)
        elif kept or calls:
            part: ChatMessage = {"role": "assistant", "content": kept or None}
            if calls:
                part["tool_calls"] = calls
            out.append(part)
    return out


def _chars(record: TurnRecord) -> int:
    return len(record.user) + sum(len(m.get("content") or "") for m in record.reply)


def _trim(history: History, max_turns: int, max_chars: int, *, coming: int = 0) -> None:
    """Drop the oldest turns, down to half the limits, once the history (with ``coming`` turns
    more) is past one."""
    turns = history.turns
    if len(turns) + coming <= max_turns and sum(map(_chars, turns)) <= max_chars:
        return
    keep_turns, keep_chars = max(1, max_turns // 2), max_chars // 2
    while len(turns) > 1 and (
        len(turns) > keep_turns or sum(map(_chars, turns)) > keep_chars
    ):
        turns.pop(0)


# ---- the store --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class HistoryLimits:
    max_turns: int = 24
    max_chars: int = 6000


class HistoryConflict(RuntimeError):
    """Compare-and-set kept failing: someone else writes the key continuously."""


class HistoryStore:
    def __init__(self, kv: KeyValueStore, limits: HistoryLimits | None = None) -> None:
        self._kv = kv
        self._limits = limits or HistoryLimits()

    @staticmethod
    def key(session: str) -> str:
        return state_key(session, LLM_STATE)

    async def _read(self, session: str) -> tuple[History, int | None]:
        try:
            entry = await self._kv.get(self.key(session))
        except KeyNotFoundError:  # also a deleted or purged key
            return History(), None
        if not entry.value:
            return History(), entry.revision
        return _decoder.decode(entry.value), entry.revision

    async def load(self, session: str) -> History:
        history, _ = await self._read(session)
        return history

    async def update(self, session: str, change: Callable[[History], bool]) -> History:
        """Apply ``change`` (returns False: nothing to write) with compare-and-set, retrying on
        conflict; returns the history as written."""
        for _ in range(_CAS_ATTEMPTS):
            history, revision = await self._read(session)
            if not change(history):
                return history
            data = _encoder.encode(history)
            try:
                if revision is None:
                    await self._kv.create(self.key(session), data)
                else:
                    await self._kv.update(self.key(session), data, last=revision)
            except KeyWrongLastSequenceError:
                continue
            return history
        raise HistoryConflict(f"history of {session!r} kept changing under us")

    async def begin_turn(self, session: str, turn: int, user: str) -> History:
        """Record the user's words of ``turn`` (a redelivered turn starts over)."""

        def change(history: History) -> bool:
            record = history.find(turn)
            if record is None:
                history.turns.append(TurnRecord(turn=turn, user=user, heard=False))
                history.turns.sort(key=lambda r: r.turn)
            else:  # (whether its reply was heard already stays: the bridge says it once)
                record.user, record.reply, record.spoken = user, [], None
            _trim(history, self._limits.max_turns, self._limits.max_chars)
            return True

        return await self.update(session, change)

    async def set_reply(self, session: str, turn: int, reply: list[ChatMessage]) -> History:
        """Record what the agent replied to ``turn`` (cut to what was heard, if that is known)."""

        def change(history: History) -> bool:
            record = history.find(turn)
            if record is None:  # trimmed away meanwhile, or the session was reset
                return False
            record.reply = (
                truncate_reply(reply, record.spoken) if record.spoken is not None else reply
            )
            # the next turn's, now: the engine can read the shorter conversation before it comes
            _trim(history, self._limits.max_turns, self._limits.max_chars, coming=1)
            return True

        return await self.update(session, change)

    async def greet(self, session: str, greeting: str) -> History:
        """The agent opened the call with ``greeting`` (turn 0, no words of the caller)."""
        await self.begin_turn(session, 0, "")
        return await self.set_reply(session, 0, [{"role": "assistant", "content": greeting}])

    async def mark_spoken(self, session: str, turn: int, char_end: int) -> History:
        """The user heard only the first ``char_end`` characters of the reply to ``turn``."""

        def change(history: History) -> bool:
            record = history.find(turn)
            if record is None or (record.spoken == char_end and record.heard):
                return False
            record.spoken, record.heard = char_end, True
            record.reply = truncate_reply(record.reply, char_end)
            return True

        return await self.update(session, change)

    async def mark_heard(self, session: str, turn: int) -> History:
        """The user heard the whole reply to ``turn``: it is no longer playing."""

        def change(history: History) -> bool:
            record = history.find(turn)
            if record is None or record.heard:
                return False
            record.heard = True
            return True

        return await self.update(session, change)

    async def delete(self, session: str) -> None:
        await self._kv.delete(self.key(session))
