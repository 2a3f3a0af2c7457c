"""Cut a streamed reply into synthesis units: a short first unit, then sentence-sized ones.

Kokoro is not autoregressive, so the first audio of a reply costs one forward pass over the whole
first unit (about 0.4 s for "Sure," and 2.2 s for a 100-character sentence on two cores). The
first unit is therefore cut early: at the first comma, semicolon, colon, dash or sentence end
within the first few words, else after about five words (preferring to cut before a word like
"and"/"with"/"for"), never as a fragment with fewer than two letters. Later units are sentences;
a sentence longer than the cap is split at its last clause mark within the cap, else at a space.
An optional ``ramp`` caps the first later units lower, so each unit's synthesis can finish while
the previous one plays.

The producer's chunk boundaries mean nothing here (the LLM publishes text as it comes): a cut
waits for the character after a mark, so "3.5", "1,000" and "Dr." never end a unit.

Pure text logic: no I/O, no clock. Each ``Unit`` carries the span ``[start, end)`` of the reply
text it covers. Units tile the reply: the first starts at 0, each starts where the previous ended
(whitespace between units belongs to the later unit), and the last ends at the reply's final
non-whitespace character. ``text`` is the span's content without surrounding whitespace and is
never empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

SENTENCE_MARKS: Final = ".!?…"
CLAUSE_MARKS: Final = ",;:"
DASHES: Final = "—–"
CLOSERS: Final = "\"'”’)]}»"
# Words to cut before when a first unit has no punctuation to cut at.
FUNCTION_WORDS: Final = frozenset(
    "and but or so because with for to that which who when where if in on at from about by "
    "while as of then than into over after before until".split()
)
# A full stop after these never ends a sentence ("Dr. Smith").
TITLES: Final = frozenset(
    "mr mrs ms dr prof st mt jr sr vs gen col capt lt sgt rev hon fig approx dept est".split()
)
_WORD_STRIP: Final = "\"'“”‘’()[]{}«».,;:!?…—–-"
_WORD: Final = re.compile(r"\S+")


@dataclass(frozen=True, slots=True)
class Unit:
    """One piece of the reply to synthesize: ``text`` covers ``reply[start:end]``."""

    index: int
    text: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Cut:
    end: int
    clause: bool  # a clause mark or dash rather than a sentence end or line break


class UnitSplitter:
    """Incremental splitter: ``push`` reply chunks as they stream, ``finish`` at the end."""

    def __init__(
        self,
        *,
        first_words: int = 5,
        first_lookahead: int = 2,
        min_first_letters: int = 2,
        max_chars: int = 200,
        ramp: Sequence[int] = (),
    ) -> None:
        """Options.

        ``first_words``: where a first unit without punctuation is cut (±1 to land before a
        function word). ``first_lookahead``: a punctuation cut up to this many words later is
        preferred to a word cut. ``min_first_letters``: fewest letters/digits in a first unit.
        ``max_chars``: cap on later units. ``ramp``: lower caps for units 1, 2, ... (e.g.
        ``(60, 120)``) before ``max_chars`` applies.
        """
        if first_words < 2 or first_lookahead < 0 or min_first_letters < 1:
            raise ValueError("first_words >= 2, first_lookahead >= 0, min_first_letters >= 1")
        if max_chars < 16 or any(cap < 16 for cap in ramp):
            raise ValueError("caps must be at least 16 characters")
        self._first_words = first_words
        self._window = first_words + first_lookahead
        self._min_first_letters = min_first_letters
        self._max_chars = max_chars
        self._ramp = tuple(ramp)
        self._text = ""
        self._pos = 0
        self._count = 0
        self._finished = False

    @property
    def text(self) -> str:
        """The reply text received so far."""
        return self._text

    @property
    def position(self) -> int:
        """Offset up to which the reply has been handed out as units."""
        return self._pos

    def push(self, chunk: str) -> list[Unit]:
        """Add a chunk of the reply; return the units it completes (possibly none)."""
        if self._finished:
            raise RuntimeError("push after finish")
        self._text += chunk
        return self._drain(final=False)

    def finish(self) -> list[Unit]:
        """The reply is complete: return the remaining units."""
        if self._finished:
            return []
        self._finished = True
        units = self._drain(final=True)
        rest = self._text[self._pos :]
        if rest.strip():
            units.append(self._emit(len(self._text.rstrip())))
        return units

    # -- internals ---------------------------------------------------------------------------

    def _drain(self, *, final: bool) -> list[Unit]:
        units: list[Unit] = []
        while (end := self._next_cut(final)) is not None:
            units.append(self._emit(end))
        return units

    def _emit(self, end: int) -> Unit:
        unit = Unit(self._count, self._text[self._pos : end].strip(), self._pos, end)
        self._pos = end
        self._count += 1
        return unit

    def _cap(self) -> int:
        later = self._count - 1
        return self._ramp[later] if 0 <= later < len(self._ramp) else self._max_chars

    def _piece(self, end: int) -> str:
        return self._text[self._pos : end].strip()

    def _next_cut(self, final: bool) -> int | None:
        if not any(c.isalnum() for c in self._text[self._pos :]):
            return None
        if self._count == 0:
            return self._first_cut(final)
        return self._later_cut(final)

    def _first_cut(self, final: bool) -> int | None:
        text, pos = self._text, self._pos
        words = [(m.start(), m.end()) for m in _WORD.finditer(text, pos)]
        for cut in _cuts(text, pos, final):
            if sum(1 for start, _ in words if start < cut.end) > self._window:
                break
            if _letters(self._piece(cut.end)) >= self._min_first_letters:
                return cut.end
        # No punctuation within the window: cut after about first_words words, once enough words
        # are complete to know none of them ends in punctuation.
        complete = len(words) if final else sum(1 for _, end in words if end < len(text))
        if not final and complete < self._window:
            return self._overflow_cut(self._max_chars)
        if len(words) <= self._window:
            return None  # final: the whole short reply is one unit
        return self._word_cut(words, complete)

    def _word_cut(self, words: list[tuple[int, int]], complete: int) -> int:
        """End of word ``first_words`` (or one either side, if the next word is a function word)."""
        target = self._first_words
        for k in (target, target - 1, target + 1):
            if k < complete and _bare(self._text[words[k][0] : words[k][1]]) in FUNCTION_WORDS:
                return words[k - 1][1]
        return words[target - 1][1]

    def _later_cut(self, final: bool) -> int | None:
        cap = self._cap()
        for cut in _cuts(self._text, self._pos, final):
            if cut.clause:
                continue
            if len(self._piece(cut.end)) > cap:
                break
            if _letters(self._piece(cut.end)):
                return cut.end
        return self._overflow_cut(cap)

    def _overflow_cut(self, cap: int) -> int | None:
        """Split pending text longer than ``cap``: last clause mark, else last space, else hard."""
        text, pos = self._text, self._pos
        lead = len(text[pos:]) - len(text[pos:].lstrip())
        limit = pos + lead + cap
        if len(text[pos:].strip()) <= cap:
            return None
        best: int | None = None
        for cut in _cuts(text, pos, final=False):
            if cut.end > limit:
                break
            if cut.clause and _letters(self._piece(cut.end)):
                best = cut.end
        if best is not None:
            return best
        spaces = [
            m.start() for m in re.finditer(r"\s+", text[: limit + 1]) if m.start() > pos + lead
        ]
        for space in reversed(spaces):
            if _letters(self._piece(space)):
                return space
        return limit


def _cuts(text: str, pos: int, final: bool) -> Iterator[_Cut]:
    """Candidate unit ends after ``pos``, in order."""
    i, n = pos, len(text)
    while i < n:
        c = text[i]
        if c in SENTENCE_MARKS:
            j = i
            while j < n and text[j] in SENTENCE_MARKS:
                j += 1
            while j < n and text[j] in CLOSERS:
                j += 1
            if j == n:
                if final:
                    yield _Cut(j, clause=False)
                return
            if text[j].isspace():
                verdict = _ends_sentence(text, i, j) if c == "." and j == i + 1 else True
                if verdict is None and not final:
                    return  # the next word decides; wait for it
                if verdict is not False:
                    yield _Cut(j, clause=False)
            i = j
            continue
        if c in CLAUSE_MARKS:
            j = i + 1
            while j < n and text[j] in CLOSERS:
                j += 1
            if j == n:
                if final:
                    yield _Cut(j, clause=True)
                return
            if text[j].isspace():
                yield _Cut(j, clause=True)
            i = j
            continue
        if c in DASHES:
            if c == "–" and i > pos and text[i - 1].isdigit():  # maybe a range: "1990–2000"
                if i + 1 == n and not final:
                    return
                if i + 1 < n and text[i + 1].isdigit():
                    i += 1
                    continue
            yield _Cut(i + 1, clause=True)
        elif c == "-" and 0 < i < n - 1 and text[i - 1].isspace() and text[i + 1].isspace():
            yield _Cut(i + 1, clause=True)
        elif c == "\n":
            end = len(text[:i].rstrip())
            if end > pos:
                yield _Cut(end, clause=False)
        i += 1


def _ends_sentence(text: str, dot: int, after: int) -> bool | None:
    """Whether the full stop at ``dot`` ends a sentence; ``None`` if the next word must decide."""
    start = dot
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    token = text[start:dot].lstrip(_WORD_STRIP)
    if token.lower() in TITLES:
        return False
    if len(token) == 1 and token.isupper():
        return False  # an initial: "J. Smith"
    if "." in token:  # "e.g.", "a.m.", "U.S.": a sentence ends only if a capital follows
        rest = text[after:].lstrip()
        if not rest:
            return None
        return rest[0].isupper()
    return True


def _letters(text: str) -> int:
    return sum(1 for c in text if c.isalnum())


def _bare(word: str) -> str:
    return word.strip(_WORD_STRIP).lower()


def split_units(text: str, splitter: UnitSplitter | None = None) -> list[Unit]:
    """All units of a complete reply (a fresh default ``UnitSplitter`` unless one is given)."""
    splitter = UnitSplitter() if splitter is None else splitter
    return [*splitter.push(text), *splitter.finish()]


def iter_units(chunks: Iterable[str], splitter: UnitSplitter | None = None) -> Iterator[Unit]:
    """Units of a reply arriving as ``chunks``, each yielded as soon as it is complete."""
    splitter = UnitSplitter() if splitter is None else splitter
    for chunk in chunks:
        yield from splitter.push(chunk)
    yield from splitter.finish()
