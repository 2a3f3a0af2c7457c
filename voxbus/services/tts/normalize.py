"""What of a reply's text is spoken: emoji and markdown markup are dropped before phonemization.

espeak reads emoji by name ("grinning face") and markdown by symbol ("asterisk"), which a voice
agent should never say. Text left with nothing pronounceable (only punctuation, emoji or
whitespace) synthesizes to no audio; ``is_speakable`` tells which.
"""

from __future__ import annotations

import re
import unicodedata

# Pictographs and other symbols from the general-punctuation block up (emoji, arrows, dingbats,
# flags, skin tones), plus the invisible joiners that glue emoji sequences together.
_SYMBOL_CATEGORIES = frozenset({"So", "Sk", "Cs", "Co"})
_INVISIBLE = frozenset({"\u200d", "\ufe0e", "\ufe0f", "\u20e3"})
_EMPHASIS = re.compile(r"[*`]+|(?<![0-9A-Za-z])_+|_+(?![0-9A-Za-z])")
_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]+", re.MULTILINE)
_SPACES = re.compile(r"\s+")


def _dropped(char: str) -> bool:
    code = ord(char)
    if char in _INVISIBLE or 0xE0000 <= code <= 0xE007F:  # emoji tag sequences
        return True
    if 0x2190 <= code <= 0x21FF:  # arrows, some of which are math symbols
        return True
    return code >= 0x2000 and unicodedata.category(char) in _SYMBOL_CATEGORIES


def speakable_text(text: str) -> str:
    """``text`` without emoji, markdown emphasis/code marks and heading hashes; spaces collapsed."""
    text = _HEADING.sub("", text)
    text = _EMPHASIS.sub("", text)
    text = "".join(" " if _dropped(c) else c for c in text)
    return _SPACES.sub(" ", text).strip()


def is_speakable(text: str) -> bool:
    """Whether ``text`` has anything to pronounce: a letter or a digit after normalization."""
    return any(c.isalnum() for c in speakable_text(text))
