"""Backchannels: what a listener says to show they are following ("mhm", "yeah", "okay", "I
see"), not to take the turn. The one word rule the bridge and the LLM share.

While the agent speaks, such words neither cut it (the bridge pauses the reply when the caller
starts speaking and plays on where it paused) nor get a reply of their own (the LLM skips such a
turn while its last reply is still being heard). Any other word is speech: it cuts the agent, as
it always did. The same words said when the agent is silent are an ordinary turn ("Yes." to a
question), answered as any other.

Text is compared as words: case, punctuation and hyphens do not count ("Mm-hmm." is "mm hmm"),
sound annotations a recogniser may write (``[cough]``, ``(laughs)``, ``*sigh*``) are no words,
and letters held long are one ("mmmhm" is "mhm").
"""

from __future__ import annotations

import enum
import re
from typing import Final


class Heard(enum.Enum):
    """What a transcript of the caller holds, for the agent talking over it."""

    NOTHING = "nothing"  # no words (a cough, a noise, silence)
    BACKCHANNEL = "backchannel"  # only backchannel words
    SPEECH = "speech"  # a word that is not a backchannel


#: Backchannels and fillers, as words (each phrase is matched whole; any sequence of them is
#: still a backchannel: "oh okay", "yeah yeah, sure").
PHRASES: Final[tuple[str, ...]] = (
    # acknowledgements
    "mhm", "mm", "mmm", "hm", "hmm", "mm hmm", "m hm", "mhmm", "uh huh", "uh hum", "uhhuh",
    "yeah", "yea", "ya", "yep", "yup", "yes", "yes yes", "okay", "ok", "k", "right", "sure",
    "alright", "all right", "i see", "got it", "gotcha", "i understand", "understood",
    "of course", "exactly", "indeed", "true", "cool", "nice", "great", "perfect", "wow",
    "makes sense", "that makes sense", "sounds good", "that's right", "thats right",
    "fair enough", "very good",
    # fillers on their own
    "uh", "um", "umm", "er", "erm", "ah", "oh", "ooh",
)

_ANNOTATION: Final = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*")
_NON_WORD: Final = re.compile(r"[^\w'\s-]+")
_HELD: Final = re.compile(r"(\w)\1+")


def _squeeze(word: str) -> str:
    """A word with letters held long said once ("mmmhmm" -> "mhm", "okaaay" -> "okay")."""
    return _HELD.sub(r"\1", word)


_PHRASES: Final[frozenset[tuple[str, ...]]] = frozenset(
    tuple(_squeeze(w) for w in p.split()) for p in PHRASES)
_LONGEST: Final = max(len(p) for p in _PHRASES)


def words(text: str) -> list[str]:
    """``text`` as the rule compares it: lower case, without annotations or punctuation, each
    word's repeated letters said once. A hyphenated word is one word if that is a backchannel
    ("Mm-hmm", "M-H-M": "mhm"), else its parts ("yeah-yeah")."""
    text = _ANNOTATION.sub(" ", text.lower()).replace("\u2019", "'")
    out: list[str] = []
    for token in _NON_WORD.sub(" ", text).split():
        joined = _squeeze(token.replace("-", ""))
        if (joined,) in _PHRASES:
            out.append(joined)
        else:
            out += [_squeeze(part) for part in token.split("-")]
    return [w for w in out if w.strip("'")]


def heard(text: str) -> Heard:
    """What ``text`` holds: no words, only backchannels, or speech."""
    ws = words(text)
    if not ws:
        return Heard.NOTHING
    # covered end to end by phrases, longest first at each place
    i = 0
    while i < len(ws):
        for n in range(min(_LONGEST, len(ws) - i), 0, -1):
            if tuple(ws[i:i + n]) in _PHRASES:
                i += n
                break
        else:
            return Heard.SPEECH
    return Heard.BACKCHANNEL


def is_backchannel(text: str) -> bool:
    """``text`` is only backchannel words (at least one)."""
    return heard(text) is Heard.BACKCHANNEL
