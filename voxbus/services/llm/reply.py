"""One reply as the LLM generates it: its text and what of it was published, the history messages
it makes, and its timings."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal

from voxbus.contracts.messages import CalledTool, ReplyText
from voxbus.services.llm.engine import ChatMessage, ToolCallDelta, assistant_message
from voxbus.services.llm.history import needs_space, truncate_reply

EndReason = Literal["done", "interrupted", "error", "length"]


@dataclass(slots=True)
class TurnStats:
    """Timings of one handled turn (``time.time_ns`` clock, comparable with ``EndOfTurn.at_ns``)."""

    session: str
    turn: int
    started_ns: int
    first_token_ns: int | None = None
    first_text_ns: int | None = None
    done_ns: int | None = None
    text_deltas: int = 0
    rounds: int = 0
    reason: EndReason | None = None
    speculated: bool = False  # the reply was a guess's, adopted at commit

    def ms(self, at_ns: int | None) -> float | None:
        return None if at_ns is None else round((at_ns - self.started_ns) / 1e6, 1)


class Reply:
    """The reply of one turn as it is generated: the text (model rounds joined), the end of what
    was already published, and the history messages produced so far.

    Text goes out as it comes (one ``ReplyText`` per engine delta, spans contiguous): the TTS
    alone decides where speech units end."""

    def __init__(self, session: str, turn: int, speculation: int = 0, *, voice: str = "",
                 agent: str = "") -> None:
        self.session = session
        self.turn = turn
        self.speculation = speculation
        self.voice = voice  # on every part: the TTS starts the reply with it
        self.agent = agent
        #: A guess's: set when the commit adopts it. A tool with side effects waits for it.
        self.adopted: asyncio.Event | None = None
        #: The tools called, in order (for ``ReplyEnd.tools``).
        self.called: list[CalledTool] = []
        #: Calls published and not answered yet: tool_call_id -> (call id, its timeout).
        self.pending: dict[str, tuple[str, float]] = {}
        self.text = ""
        self.sent = 0  # text[:sent] has been yielded as ReplyText
        self.messages: list[ChatMessage] = []  # finished rounds: assistant, tool results
        self.round: list[str] = []  # raw text of the round in progress
        self.end_call = False  # end_call ran: hang up after this reply
        self.transfer_to = ""  # transfer_call ran: the call goes there after this reply
        self._seq = 0
        self._new_round = False

    @property
    def published(self) -> str:
        return self.text[: self.sent]

    def push(self, piece: str) -> list[ReplyText]:
        self.round.append(piece)
        if self._new_round:
            self._new_round = False
            if needs_space(self.text, piece):
                piece = " " + piece
        self.text += piece
        return self._rest()

    def end_round(self, calls: list[ToolCallDelta]) -> None:
        """Close the model's round (its text was published as it came)."""
        self.messages.append(assistant_message("".join(self.round), calls))
        self.round = []
        self._new_round = True

    def aside(self, text: str) -> list[ReplyText]:
        """Say ``text`` between rounds (a filler while a tool runs): recorded at the end of the
        last assistant message, where it was said."""
        if needs_space(self.text, text):
            text = " " + text
        self.text += text
        for message in reversed(self.messages):
            if message["role"] == "assistant":
                before = message.get("content") or ""
                message["content"] = before + (text if before else text.lstrip())
                break
        else:
            self.messages.append(assistant_message(text.lstrip()))
        return self._rest()

    def say(self, text: str) -> list[ReplyText]:
        """Replace the unpublished rest with ``text`` (the apology)."""
        self.text = self.text[: self.sent]
        self.text += (" " if needs_space(self.text, text) else "") + text
        self.messages = [assistant_message(self.text)]
        return self._rest()

    def heard_so_far(self) -> list[ChatMessage]:
        """History messages of an unfinished reply, cut at what was published."""
        pending = [assistant_message("".join(self.round))] if self.round else []
        return truncate_reply(self.messages + pending, self.sent)

    def _rest(self) -> list[ReplyText]:
        end = len(self.text)
        if end <= self.sent:
            return []
        out = ReplyText(
            session=self.session, turn=self.turn, seq=self._seq, text=self.text[self.sent : end],
            char_start=self.sent, char_end=end, emitted_ns=time.time_ns(),
            speculation=self.speculation, voice=self.voice,
        )
        self._seq += 1
        self.sent = end
        return [out]
