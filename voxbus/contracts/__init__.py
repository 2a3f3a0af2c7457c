"""The voxbus wire language: message structs, subject names and stream definitions.

Downstream consumers (analytics, dashboards) import this package alone: it depends only on msgspec.
"""

from voxbus.contracts.messages import (
    AgentSpoke,
    AudioIn,
    AudioOut,
    ControlEvent,
    EndOfTurn,
    ErrorEvent,
    Interrupt,
    Message,
    PurgeCompleted,
    PurgeRequested,
    ReplyEnd,
    ReplyText,
    SessionEnded,
    SessionStarted,
    Transcript,
    TurnResumed,
    UserStartedSpeaking,
    UserStoppedSpeaking,
    decode,
    encode,
)
from voxbus.contracts.subjects import Kind, kind_of, parse_subject, subject, subject_for

__all__ = [
    "AgentSpoke",
    "AudioIn",
    "AudioOut",
    "ControlEvent",
    "EndOfTurn",
    "TurnResumed",
    "ErrorEvent",
    "Interrupt",
    "Kind",
    "Message",
    "PurgeCompleted",
    "PurgeRequested",
    "ReplyEnd",
    "ReplyText",
    "SessionEnded",
    "SessionStarted",
    "Transcript",
    "UserStartedSpeaking",
    "UserStoppedSpeaking",
    "decode",
    "encode",
    "kind_of",
    "parse_subject",
    "subject",
    "subject_for",
]
