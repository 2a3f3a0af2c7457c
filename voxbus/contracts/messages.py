"""Wire messages: frozen, keyword-only, tagged msgspec structs encoded as MessagePack.

Schema-evolution rules (tested in tests/contracts/test_evolution.py):
1. A new field always has a default, so a message from the previous version still decodes.
2. A field's type and meaning never change; a field is never renamed. Retire a field by keeping it
   with a default and ignoring it.
3. Unknown fields are ignored (never ``forbid_unknown_fields``), so an old consumer decodes a newer
   producer's message.
4. A tag (``type``) is never reused for another shape. A new message type is a new tag; an old
   consumer answers an unknown tag with an error event rather than crashing.
5. Times are integer nanoseconds since the Unix epoch (``*_ns``), durations are ``*_ms`` floats,
   rates are ``sample_rate_hz``.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, TypeAlias

import msgspec
from msgspec import Meta

#: A session id is one subject token: letters, digits, ``_`` and ``-``.
SESSION_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"
#: 200 ms of 48 kHz stereo PCM16: anything larger is an oversized frame.
MAX_FRAME_BYTES: Final = 48_000 * 2 * 2 // 5
MAX_TEXT_CHARS: Final = 8_000

SessionId = Annotated[str, Meta(pattern=SESSION_PATTERN)]
NonNegative = Annotated[int, Meta(ge=0)]
SampleRate = Annotated[int, Meta(ge=8_000, le=48_000)]
Channels = Annotated[int, Meta(ge=1, le=2)]
Pcm = Annotated[bytes, Meta(max_length=MAX_FRAME_BYTES)]
Text = Annotated[str, Meta(max_length=MAX_TEXT_CHARS)]
#: Telephone keys (DTMF): digits, ``*``, ``#`` and ``A``-``D``.
KEY_CHARS: Final = "0123456789*#ABCD"
Keys = Annotated[str, Meta(pattern=r"^[0-9*#A-D]*$", max_length=64)]


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every message carries. ``turn`` numbers the user's utterances, starting at 1;
    0 means "not part of a turn"."""

    session: SessionId
    turn: NonNegative = 0


# ---- data -----------------------------------------------------------------------------------


class AudioIn(Message, frozen=True, kw_only=True, tag="audio.in"):
    """PCM16 little-endian frames from a participant's microphone."""

    seq: NonNegative
    sample_rate_hz: SampleRate
    channels: Channels = 1
    capture_ns: int
    pcm: Pcm
    participant: str = ""
    #: The last user turn the sender has heard of for this session (the bridge's). A stage
    #: whose state for the session is gone (the server came back with an empty store) numbers
    #: the next turn above it, so the listener does not take the new turns for old ones.
    turns_heard: NonNegative = 0
    #: Telephone keys the caller pressed just before this frame (DTMF from a phone call), in
    #: order with their audio; the STT makes a turn of them (``EndOfTurn.keys``).
    keys: Keys = ""


class Transcript(Message, frozen=True, kw_only=True, tag="stt.transcript"):
    """A partial (``is_final`` false) or final transcript of the user's utterance ``turn``."""

    seq: NonNegative
    text: Text
    is_final: bool
    speech_start_ns: int
    speech_end_ns: int = 0
    decode_ms: float = 0.0
    language: str = "en"
    emitted_ns: int = 0


class ReplyText(Message, frozen=True, kw_only=True, tag="llm.reply.text"):
    """A clause-sized chunk of the agent's reply; ``char_start``/``char_end`` index the reply.
    ``speculation``: the reply to the user's words as guessed by speculative ``EndOfTurn`` number
    ``speculation`` of the turn (0: to the committed words; see ``EndOfTurn``)."""

    seq: NonNegative
    text: Text
    char_start: NonNegative
    char_end: NonNegative
    emitted_ns: int = 0
    speculation: NonNegative = 0
    #: On a reply's first part: the voice of the agent that speaks it ("": the TTS's own).
    voice: str = ""


class CalledTool(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A tool the agent called in a reply: its name, its arguments (JSON text), whether it
    succeeded."""

    name: str
    arguments: str = "{}"
    ok: bool = True


class ReplyEnd(Message, frozen=True, kw_only=True, tag="llm.reply.end"):
    """The reply of ``turn`` is complete (or was cut short: see ``reason``)."""

    text: Text
    reason: Literal["done", "interrupted", "error", "length"] = "done"
    end_call: bool = False
    #: A phone call goes to this ``tel:``/``sip:`` address once the reply has played
    #: (``transfer_call``; "": none).
    transfer_to: Annotated[str, Meta(max_length=256)] = ""
    emitted_ns: int = 0
    speculation: NonNegative = 0
    #: The agent that gave the reply, and the tools it called (``transfer_to_<agent>`` for a
    #: handoff, which takes effect from the next reply).
    agent: str = ""
    tools: list[CalledTool] = msgspec.field(default_factory=list)


class AudioOut(Message, frozen=True, kw_only=True, tag="audio.out"):
    """A small frame of synthesized speech. ``text_start``/``text_end`` is the span of the reply
    text this frame covers; ``last`` marks the end of the reply's audio."""

    seq: NonNegative
    sample_rate_hz: SampleRate
    channels: Channels = 1
    pcm: Pcm
    text_start: NonNegative = 0
    text_end: NonNegative = 0
    last: bool = False
    emitted_ns: int = 0
    speculation: NonNegative = 0  # the reply's (``ReplyText.speculation``)


# ---- control --------------------------------------------------------------------------------


class SessionStarted(Message, frozen=True, kw_only=True, tag="ctl.session.started"):
    room: str = ""
    participant: str = ""
    at_ns: int = 0
    #: The agent the session talks to ("": the LLM worker's default).
    agent: str = ""


class SessionEnded(Message, frozen=True, kw_only=True, tag="ctl.session.ended"):
    reason: str = ""
    at_ns: int = 0


class UserStartedSpeaking(Message, frozen=True, kw_only=True, tag="ctl.speech.started"):
    at_ns: int


class UserStoppedSpeaking(Message, frozen=True, kw_only=True, tag="ctl.speech.stopped"):
    at_ns: int


class EndOfTurn(Message, frozen=True, kw_only=True, tag="ctl.turn.end"):
    """The user finished utterance ``turn``; carries its final transcript.

    Speculative (``speculative``): the user fell silent and the words so far are decoded, but the
    turn may yet go on. Stages may prepare the reply to these words (tagged ``speculation``, its
    number within the turn, from 1) and nobody plays it. Then either ``TurnResumed`` voids it, or
    the committed ``EndOfTurn`` (not speculative) names in ``speculation`` the guess whose words
    it commits (0: none; everything speculative of the turn is dropped)."""

    transcript: Text
    speech_start_ns: int
    speech_end_ns: int
    decode_ms: float = 0.0
    at_ns: int = 0
    speculative: bool = False
    speculation: NonNegative = 0
    #: Telephone keys the caller pressed (a turn of keys has no words: ``transcript`` is "").
    keys: Keys = ""


class TurnResumed(Message, frozen=True, kw_only=True, tag="ctl.turn.resumed"):
    """The user went on speaking after speculative ``EndOfTurn`` ``speculation``: drop its reply."""

    speculation: NonNegative
    at_ns: int = 0


class Interrupt(Message, frozen=True, kw_only=True, tag="ctl.interrupt"):
    """Barge-in: stop everything for turns <= ``turn`` of this session now."""

    at_ns: int
    reason: str = "barge_in"


class AgentSpoke(Message, frozen=True, kw_only=True, tag="ctl.spoken"):
    """What the agent actually got to say of reply ``turn`` (the first ``char_end`` characters)."""

    text: Text
    char_end: NonNegative
    interrupted: bool
    at_ns: int = 0


class ErrorEvent(Message, frozen=True, kw_only=True, tag="ctl.error"):
    code: str
    message: str
    stage: str = ""
    subject: str = ""
    at_ns: int = 0


class PurgeRequested(Message, frozen=True, kw_only=True, tag="ops.purge.requested"):
    """Erase everything of ``session`` in ``region``. Only the operator identity may publish it."""

    region: str
    request_id: str = ""
    requested_by: str = ""


class PurgeCompleted(Message, frozen=True, kw_only=True, tag="ops.purge.completed"):
    region: str
    request_id: str = ""
    removed: dict[str, int] = msgspec.field(default_factory=dict)
    at_ns: int = 0


#: A tool call's id: unique in its session and the same when a replica redoes the turn.
CallId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class ToolCall(Message, frozen=True, kw_only=True, tag="tool.call"):
    """The LLM asks the session's tool workers to run ``tool`` of ``agent``. ``call_id`` is the
    call's idempotency key (it names the turn, the reply, the model's round and the call's place
    in it, so a replica that redoes the turn asks with the same key): the outcome is kept under
    it in the state bucket (``agents.tool_key``) before the call is acked, and a call whose
    outcome is kept is never run again. ``turn`` is 0: a call the model made runs even if the
    caller interrupts the reply (the reply is cut; what the tool did is recorded)."""

    call_id: CallId
    agent: str
    tool: str
    arguments: Text = "{}"
    timeout_s: float = 10.0
    at_ns: int = 0


#: A sealed payload's ciphertext: the largest message sealed (an 8,000-character text, a full
#: frame) and the AEAD's nonce and tag.
MAX_BOX_BYTES: Final = 64 * 1024


class Sealed(Message, frozen=True, kw_only=True, tag="sealed"):
    """A session message encrypted under the session's own key (``contracts.sealing``): a purge
    erases the key, and every copy left anywhere (raft logs, old revisions, a backup) is
    ciphertext nobody can open. What routing, ordering and metrics read stays clear: the
    session and turn, the sealed message's ``kind`` (its tag), its ``seq`` and its time
    (``at_ns``: the time field the message carries, e.g. ``emitted_ns`` or ``capture_ns``)."""

    kind: Annotated[str, Meta(max_length=32)]
    seq: NonNegative = 0
    at_ns: int = 0
    #: Nonce (12 bytes), then the AES-GCM ciphertext and tag of the encoded message.
    box: Annotated[bytes, Meta(max_length=MAX_BOX_BYTES)]


ControlEvent: TypeAlias = (
    SessionStarted
    | SessionEnded
    | UserStartedSpeaking
    | UserStoppedSpeaking
    | EndOfTurn
    | TurnResumed
    | Interrupt
    | AgentSpoke
    | ErrorEvent
)

AnyMessage: TypeAlias = (
    AudioIn
    | Transcript
    | ReplyText
    | ReplyEnd
    | AudioOut
    | ControlEvent
    | ToolCall
    | PurgeRequested
    | PurgeCompleted
    | Sealed
)

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final[msgspec.msgpack.Decoder[AnyMessage]] = msgspec.msgpack.Decoder(
    AnyMessage
)


def encode(msg: Message) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes) -> AnyMessage:
    """Decode any voxbus message. Raises ``msgspec.DecodeError`` (malformed, unknown tag) or
    ``msgspec.ValidationError`` (constraint violated, e.g. an oversized frame)."""
    return _decoder.decode(data)


#: JetStream message-id header: the server drops a message whose id it stored inside the
#: stream's duplicate window (``streams.DUPLICATE_WINDOW_S``).
MSG_ID_HEADER: Final = "Nats-Msg-Id"

_OUTPUT_TAGS: Final[dict[type[Message], str]] = {
    ReplyText: "rt", ReplyEnd: "re", AudioOut: "ao", EndOfTurn: "eot",
    UserStartedSpeaking: "uss", UserStoppedSpeaking: "usp", AgentSpoke: "spoke",
}


def message_id(msg: Message) -> str | None:
    """The id of a stage's output, from what it is (session, turn, kind, sequence), never from
    when or where it was made: a replica that redoes a turn after a takeover publishes the same
    ids, and the stream keeps the first copy of each. ``None`` for what has no such identity
    (caller audio, errors, messages outside a turn)."""
    if isinstance(msg, ToolCall):  # outside a turn (its effect outlives the turn's speech)
        return f"{msg.session}.tc.{msg.call_id}"
    if msg.turn == 0:
        return None
    if isinstance(msg, Transcript):
        part = "final" if msg.is_final else f"p{msg.seq}"
        return f"{msg.session}.{msg.turn}.tr.{part}"
    if isinstance(msg, TurnResumed):
        return f"{msg.session}.{msg.turn}.resumed.s{msg.speculation}"

    tag = _OUTPUT_TAGS.get(type(msg))
    if tag is None:
        return None
    if isinstance(msg, EndOfTurn) and msg.speculative:
        tag += f".s{msg.speculation}"
    elif isinstance(msg, ReplyText | ReplyEnd | AudioOut) and msg.speculation:
        tag += f".s{msg.speculation}"
    seq = getattr(msg, "seq", None)
    return f"{msg.session}.{msg.turn}.{tag}" + (f".{seq}" if seq is not None else "")


def ends_turn(msg: Message) -> bool:
    """``msg`` is the committed end of a turn (an ``EndOfTurn`` that is not a guess)."""
    return isinstance(msg, EndOfTurn) and not msg.speculative
