"""Clause chunker: LLM tokens in, TTS-sized text chunks out (pure, no I/O).

The first chunk of a reply leaves as early as possible: at the first natural break
(``, ; : — … . ! ?``) or once ``first_max_words`` whole words exist. After that, chunks are whole
sentences (a sentence longer than ``max_chars`` is cut at its last clause break or word boundary).
A break counts only once the character after it is known, so nothing is ever cut inside a word,
and "3.5", "1,000", "9:30", "Dr.", "e.g." and "U.S." do not end a chunk.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator

SENTENCE_ENDS = frozenset(".!?…")
CLAUSE_BREAKS = SENTENCE_ENDS | frozenset(",;:—")
_CLOSERS = frozenset("\"')]}»”’")
_OPENERS = "\"'([{«“‘"
ABBREVIATIONS = frozenset(
    {
        "dr.",
        "mr.",
        "mrs.",
        "ms.",
        "prof.",
        "st.",
        "jr.",
        "sr.",
        "vs.",
        "mt.",
        "ft.",
        "approx.",
        "inc.",
        "ltd.",
        "co.",
        "corp.",
        "dept.",
        "fig.",
        "ca.",
        "cf.",
        "gen.",
        "gov.",
        "sen.",
        "rep.",
        "rev.",
        "capt.",
        "sgt.",
        "lt.",
        "col.",
    }
)
_DOTTED = re.compile(r"(?:[a-z]\.){2,}")  # e.g. i.e. a.m. u.s.
_INITIAL = re.compile(r"[A-HJ-Z]\.")  # J. R. R. Tolkien (not "I.")


class ClauseChunker:
    """Feed tokens with ``push``; call ``flush`` when the reply ends (it also resets)."""

    def __init__(self, *, first_max_words: int = 5, max_chars: int = 150) -> None:
        self._first_max_words = first_max_words
        self._max_chars = max_chars
        self._buf = ""
        self._first = True

    def push(self, text: str) -> list[str]:
        self._buf += text
        out: list[str] = []
        while (end := self._find_break()) is not None:
            chunk, self._buf = self._buf[:end].strip(), self._buf[end:]
            if chunk:
                out.append(chunk)
                self._first = False
        return out

    def flush(self) -> list[str]:
        """The rest of the reply; the chunker is then ready for the next reply."""
        chunk = self._buf.strip()
        self.reset()
        return [chunk] if chunk else []

    def reset(self) -> None:
        """Drop everything (barge-in)."""
        self._buf = ""
        self._first = True

    def _find_break(self) -> int | None:
        buf = self._buf
        breaks = CLAUSE_BREAKS if self._first else SENTENCE_ENDS
        n = len(buf)
        words = 0
        in_word = False
        last_clause = last_space = None
        for i, ch in enumerate(buf):
            if ch.isspace():
                if ch == "\n" and buf[:i].strip():
                    return i + 1
                if in_word:
                    words += 1
                    in_word = False
                    if self._first and words >= self._first_max_words:
                        return i
                    if i <= self._max_chars:
                        last_space = i
                continue
            in_word = True
            if ch not in CLAUSE_BREAKS:
                continue
            j = i + 1
            while j < n and (buf[j] in _CLOSERS or (buf[j] in SENTENCE_ENDS and ch != "—")):
                j += 1
            if j >= n:
                break  # what follows is not known yet
            if ch == "—":
                if "—" in breaks:
                    return j
                if j <= self._max_chars:
                    last_clause = j
                continue
            if not buf[j].isspace():
                continue  # 3.5, 1,000, 9:30, e.g
            if ch == "." and self._is_abbreviation(i):
                continue
            if ch in breaks:
                return j
            if j <= self._max_chars:
                last_clause = j
        if not self._first and n > self._max_chars:
            return last_clause or last_space
        return None

    def _is_abbreviation(self, dot: int) -> bool:
        buf = self._buf
        start = dot
        while start > 0 and not buf[start - 1].isspace():
            start -= 1
        word = buf[start : dot + 1].lstrip(_OPENERS)
        lower = word.lower()
        if lower in ABBREVIATIONS or _DOTTED.fullmatch(lower) or _INITIAL.fullmatch(word):
            return True
        # "1. First step": a list number opening the chunk
        return word[:-1].isdigit() and not buf[:start].strip()


async def chunk_clauses(
    tokens: AsyncIterable[str], *, first_max_words: int = 5, max_chars: int = 150
) -> AsyncIterator[str]:
    """Async form: the chunks of one reply, the rest flushed when ``tokens`` ends."""
    chunker = ClauseChunker(first_max_words=first_max_words, max_chars=max_chars)
    async for token in tokens:
        for chunk in chunker.push(token):
            yield chunk
    for chunk in chunker.flush():
        yield chunk
