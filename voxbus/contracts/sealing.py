"""Crypto-shredding: a session's personal payloads sealed under a key of that session alone.

Every message that carries what a caller said or heard (audio, transcripts, replies, tool calls,
the caller record) travels and is stored as a ``Sealed`` message, and the session's state
entries as sealed values. The key is made when the session starts and kept in the region's keys
bucket (``streams.keys_bucket``: in the servers' memory only, never on their disks), readable
only by the region's own identities. A purge erases the key first: from then on every copy of
the session anywhere (a raft log, a superseded KV revision, a backup of the store) is ciphertext
without a key.

An analytics consumer opens what it reads with the session's key (``Sealer(key).open(msg)``);
the AEAD comes from ``cryptography``, which this module imports only when a key is used (the
``voxbus-contracts[sealed]`` extra), so the contracts alone still need only msgspec.

The key of session ``S`` is the value of ``S.key`` in the keys bucket: 32 random bytes (AES-256
in GCM mode, a random 96-bit nonce per payload). A sealed payload's associated data names its
session and place, so a sealed payload moved to another session or kind does not open.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

from voxbus.contracts import messages as m

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
#: A sealed KV value starts with these bytes (no JSON or MessagePack value does).
VALUE_MAGIC: Final = b"\x00vxs1"

#: The messages sealed: each carries what a caller said or heard, or who they are. Timing-only
#: events (speech started, stopped, interrupts, resumptions, the end of a session) and error
#: events stay clear.
SEALED_TYPES: Final[tuple[type[m.Message], ...]] = (
    m.AudioIn, m.AudioOut, m.Transcript, m.ReplyText, m.ReplyEnd, m.EndOfTurn, m.AgentSpoke,
    m.ToolCall, m.SessionStarted,
)
_TIME_FIELDS: Final = ("emitted_ns", "capture_ns", "at_ns", "speech_end_ns")


class SealError(ValueError):
    """A sealed payload that does not open with the key given (another session's, a purged
    session's new key, or tampered bytes)."""


def key_name(session: str) -> str:
    """The session's key in the keys bucket."""
    return f"{session}.key"


def is_sealed_value(data: bytes) -> bool:
    return data.startswith(VALUE_MAGIC)


def _tag(msg: m.Message) -> str:
    return str(type(msg).__struct_config__.tag)


def _aad(session: str, turn: int, kind: str, seq: int) -> bytes:
    return f"{session}\x00{turn}\x00{kind}\x00{seq}".encode()


class Sealer:
    """Seals and opens the payloads of one session with its key."""

    def __init__(self, session: str, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SealError(f"a session key is {KEY_BYTES} bytes, got {len(key)}")
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as e:  # pragma: no cover - the main package depends on it
            raise ImportError("opening sealed voxbus payloads needs the 'cryptography' "
                              "package: pip install 'voxbus-contracts[sealed]'") from e
        self.session = session
        self.key = key
        self._aead: AESGCM = AESGCM(key)

    def seal(self, msg: m.Message) -> m.Sealed:
        if msg.session != self.session:
            raise SealError(f"a message of session {msg.session!r} sealed with the key of "
                            f"{self.session!r}")
        kind, seq = _tag(msg), int(getattr(msg, "seq", 0))
        at_ns = next((int(v) for f in _TIME_FIELDS if (v := getattr(msg, f, 0))), 0)
        nonce = os.urandom(NONCE_BYTES)
        box = nonce + self._aead.encrypt(nonce, m.encode(msg),
                                         _aad(msg.session, msg.turn, kind, seq))
        return m.Sealed(session=msg.session, turn=msg.turn, kind=kind, seq=seq, at_ns=at_ns,
                        box=box)

    def open(self, sealed: m.Sealed) -> m.AnyMessage:
        """The message inside; ``SealError`` where it does not open or is not what the clear
        fields say it is."""
        from cryptography.exceptions import InvalidTag

        if sealed.session != self.session:
            raise SealError(f"a message of session {sealed.session!r} opened with the key of "
                            f"{self.session!r}")
        nonce, body = sealed.box[:NONCE_BYTES], sealed.box[NONCE_BYTES:]
        try:
            data = self._aead.decrypt(nonce, body, _aad(sealed.session, sealed.turn,
                                                        sealed.kind, sealed.seq))
        except (InvalidTag, ValueError):
            raise SealError(f"a sealed {sealed.kind} of session {sealed.session!r} does not "
                            "open with this key") from None
        msg = m.decode(data)
        if (isinstance(msg, m.Sealed) or msg.session != sealed.session
                or msg.turn != sealed.turn or _tag(msg) != sealed.kind):
            raise SealError(f"a sealed {sealed.kind} of session {sealed.session!r} holds "
                            "another message")
        return msg

    def seal_value(self, name: str, data: bytes) -> bytes:
        """A state entry's value, sealed (``name``: its key, bound to the value)."""
        nonce = os.urandom(NONCE_BYTES)
        return VALUE_MAGIC + nonce + self._aead.encrypt(nonce, data, name.encode())

    def open_value(self, name: str, data: bytes) -> bytes:
        """A value ``seal_value`` made (a value that was never sealed is returned as it is)."""
        from cryptography.exceptions import InvalidTag

        if not is_sealed_value(data):
            return data
        body = data[len(VALUE_MAGIC):]
        try:
            return self._aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], name.encode())
        except (InvalidTag, ValueError):
            raise SealError(f"the state entry {name!r} does not open with this key") from None


def seals(msg: m.Message) -> bool:
    """``msg`` is of a kind that travels sealed."""
    return isinstance(msg, SEALED_TYPES)


def unseal(msg: m.AnyMessage, key: bytes) -> m.AnyMessage:
    """The message inside ``msg`` where it is sealed, opened with its session's ``key`` (the
    value of ``key_name(session)`` in ``streams.keys_bucket(region)``); others as they are."""
    return Sealer(msg.session, key).open(msg) if isinstance(msg, m.Sealed) else msg
