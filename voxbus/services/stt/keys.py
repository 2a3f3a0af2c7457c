"""Telephone keys (DTMF) into turns: the keys a caller presses come in order with their audio
(``AudioIn.keys``) and are gathered into one turn of keys (``EndOfTurn.keys``, no words), so
"1", or a PIN typed in a row, is one thing the agent answers, like a sentence.

The turn of keys ends ``gap`` of audio after the last key, or at once on ``#``, and never while
a turn of speech is open (it waits for that turn's end). Time is the audio's, not the clock's,
so a replica that takes the session over and replays the frames makes the same turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: Audio after the last key that ends a turn of keys.
KEYS_GAP_MS: Final = 1200
#: The key that ends a turn of keys at once.
END_KEY: Final = "#"


@dataclass
class Keypad:
    #: ``KEYS_GAP_MS`` in samples of the stream.
    gap: int
    keys: str = ""
    #: Stream positions (samples) of the first and the last key not yet in a turn.
    first_at: int = -1
    last_at: int = -1

    def press(self, keys: str, at: int) -> None:
        if not keys:
            return
        if not self.keys:
            self.first_at = at
        self.keys += keys
        self.last_at = at

    def due(self, now: int, *, speaking: bool) -> tuple[str, int] | None:
        """The keys of a turn that ends now, and where its first key was; None: not yet."""
        if not self.keys or speaking:
            return None
        if not self.keys.endswith(END_KEY) and now - self.last_at < self.gap:
            return None
        out = (self.keys, self.first_at)
        self.keys, self.first_at, self.last_at = "", -1, -1
        return out
