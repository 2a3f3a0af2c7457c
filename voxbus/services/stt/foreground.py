"""The caller's turn or talk behind them: a turn whose voice is more than ``margin_db`` under
the caller's is people talking near the caller, and is dropped.

Silero hears any voice, and Whisper writes down what people behind the caller say once their
talk is alone in a turn (in the hearing bench, three talkers 12 dB under the caller came out as
words in 16 of 30 clips). The caller is near the microphone and louder. A turn's voice is the
90th percentile of its speech windows' levels (its loud syllables: a window at a time, the
caller's own quiet syllables go as low as the talk behind them, so a gate per window cut the
caller's words); the caller's voice is the loudest of the turns kept, falling
``DECAY_DB_PER_S`` a second of stream (a caller who moves away is followed, slowly). Measured
on the bench's babble: talk alone peaks 8.4 dB or more under the caller. The first turn sets
the caller's voice, whoever speaks it: talk before the caller's first words is not told apart.

The same level tells the caller's words from theirs in a partial's decode
(``callers_words_end``): Whisper writes down talk behind the caller when it is alone, and the
turn must not wait for those words to stop (services.stt.turns).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

#: How fast the caller's voice level falls, a second of stream.
DECAY_DB_PER_S = 0.3
#: The turn's voice: this percentile of its speech windows' levels.
VOICE_PERCENTILE = 90
#: Speech windows of a turn kept for its level (30 s of 32 ms windows).
MAX_WINDOWS = 1000
#: Samples of a VAD window (32 ms at 16 kHz): a word's windows are those ending in it, or
#: within one window after it.
WINDOW = 512


class Foreground:
    """One stream's judge. ``hear(probability, level_db, end_sample)`` per VAD window, in order;
    ``turn_started(onset)`` and ``turn_ended(at_s, upto)`` as turns start and end."""

    def __init__(self, *, margin_db: float, speech_threshold: float) -> None:
        self.margin_db = margin_db
        self._threshold = speech_threshold
        self.reset()

    def reset(self) -> None:
        self.voice_db: float | None = None  # the caller's voice level, once a turn is kept
        self._voice_at_s = 0.0
        # (end sample, level) of the speech windows since the turn started
        self._levels: deque[tuple[int, float]] = deque(maxlen=MAX_WINDOWS)
        #: Turns dropped as talk behind the caller.
        self.dropped = 0

    def turn_started(self, onset: int) -> None:
        while self._levels and self._levels[0][0] <= onset:
            self._levels.popleft()

    def hear(self, probability: float, level_db: float | None, end_sample: int) -> None:
        if self.margin_db > 0 and level_db is not None and probability >= self._threshold:
            self._levels.append((end_sample, level_db))

    def callers_words_end(self, spans: Sequence[tuple[int, int]]) -> int | None:
        """Where the last of these words (sample spans in the open turn) loud enough to be the
        caller's ends: its loudest window within ``margin_db`` of the caller's voice. None: no
        word is (or the caller's voice is not known)."""
        bar = self._callers_bar()
        if bar is None:
            return None
        for start, end in reversed(spans):
            if any(start < at <= end + WINDOW and level >= bar for at, level in self._levels):
                return end
        return None

    def callers_voice_after(self, sample: int) -> int | None:
        """Where the first window after ``sample`` loud enough to be the caller's starts."""
        bar = self._callers_bar()
        if bar is None:
            return None
        return next((at - WINDOW for at, level in self._levels
                     if at - WINDOW >= sample and level >= bar), None)

    def _callers_bar(self) -> float | None:
        """The quietest level that can be the caller's (None: their voice is not known)."""
        return None if self.voice_db is None else self.voice_db - self.margin_db

    def turn_ended(self, at_s: float, upto: int) -> bool:
        """Whether the turn that ended at ``at_s`` (stream seconds), its audio up to sample
        ``upto``, was talk behind the caller. Later windows stay for the next turn."""
        levels = []
        while self._levels and self._levels[0][0] <= upto:
            levels.append(self._levels.popleft()[1])
        if self.margin_db <= 0 or not levels:
            return False
        level = float(np.percentile(levels, VOICE_PERCENTILE))
        voice = self.voice_db
        if voice is not None:
            voice -= DECAY_DB_PER_S * max(0.0, at_s - self._voice_at_s)
            if level < voice - self.margin_db:
                self.dropped += 1
                return True
        self.voice_db = level if voice is None else max(voice, level)
        self._voice_at_s = at_s
        return False
