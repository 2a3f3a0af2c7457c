"""The caller's own voice or talk behind them: a speech window counts as the caller's only when
it is within ``margin_db`` of the caller's voice.

Silero hears any voice: people talking near the caller score as speech, so without this a turn
ends only when they stop (in the hearing bench, three talkers 12 dB under the caller held every
turn to the end of the clip). The caller is near the microphone and louder; they are not. The
caller's voice level is a peak follower over the caller's speech windows (it falls
``DECAY_DB_PER_S`` a second of their speech between loud syllables, so it follows a caller who
moves away slowly, and is carried from one turn to the next). A
speech window whose level, held over ``HOLD_WINDOWS`` (about 100 ms, so the caller's own quiet
syllables keep their word), is more than ``margin_db`` under it is heard as silence: the turn
ends the usual silence after the caller's last word, and, once the caller's voice is known,
talk behind them starts no turn. The gate only ever turns speech into silence, never the other
way: on clean audio it changes nothing.
"""

from __future__ import annotations

from collections import deque

#: How fast the caller's voice level falls between syllables (dB a second).
DECAY_DB_PER_S = 3.0
#: Windows a level is held over (32 ms each).
HOLD_WINDOWS = 3
#: Windows of the caller's voice before the gate trusts its level.
MIN_VOICE_WINDOWS = 6


class Foreground:
    """One stream's gate. ``hear(probability, level_db)`` per VAD window, in order."""

    def __init__(self, *, margin_db: float, speech_threshold: float,
                 window_s: float = 0.032) -> None:
        self.margin_db = margin_db
        self._threshold = speech_threshold
        self._decay = DECAY_DB_PER_S * window_s
        self.reset()

    def reset(self) -> None:
        self.voice_db: float | None = None  # the caller's voice level, once known
        self._windows = 0  # speech windows the level was learned from
        self._held: deque[float] = deque(maxlen=HOLD_WINDOWS)
        #: Speech windows heard as talk behind the caller.
        self.gated = 0

    def hear(self, probability: float, level_db: float | None) -> float:
        """The probability the turn detector should see for this window."""
        if level_db is None or self.margin_db <= 0:
            return probability
        self._held.append(level_db)
        voice = self.voice_db
        if probability < self._threshold:
            return probability
        if (voice is not None and self._windows >= MIN_VOICE_WINDOWS
                and max(self._held) < voice - self.margin_db):
            self.gated += 1
            return 0.0
        self.voice_db = level_db if voice is None else max(voice - self._decay, level_db)
        self._windows += 1
        return probability
