"""Transcript normalisation for comparisons: lowercase, no punctuation, numbers as words.

"The pharmacy closes at 9:30 tonight." -> "the pharmacy closes at nine thirty tonight"
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((1_000_000_000, "billion"), (1_000_000, "million"), (1_000, "thousand"))
_ORDINAL_SUFFIX = re.compile(r"^(\d+)(st|nd|rd|th)$")
_ORDINALS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_TIME = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_NUMBER = re.compile(r"\d+(?:st|nd|rd|th)?")
_THOUSANDS_SEP = re.compile(r"(?<=\d),(?=\d{3}\b)")
_SYMBOLS = {"%": " percent ", "&": " and ", "+": " plus ", "@": " at "}
_DROP = re.compile(r"[^\w\s]|_")
#: "$200" -> "200 dollars" (Whisper writes amounts with the sign, people say the word).
_CURRENCY = re.compile(r"([$€£])(\d+(?:\.\d+)?)")
_CURRENCY_WORDS = {"$": "dollars", "€": "euros", "£": "pounds"}
#: Titles Whisper abbreviates: "Dr. Patel" is "doctor patel" as said.
_TITLES = re.compile(r"\b(dr|mr|mrs|ms)\.(?=\s)")
_TITLE_WORDS = {"dr": "doctor", "mr": "mister", "mrs": "missus", "ms": "miss"}


def number_to_words(n: int) -> str:
    """Cardinal English words for a non-negative integer: 42 -> "forty two"."""
    if n < 0:
        raise ValueError("negative numbers are not supported")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))
    for value, name in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            words = number_to_words(head) + " " + name
            return words + ("" if rest == 0 else " " + number_to_words(rest))
    raise AssertionError("unreachable")


def _ordinal(words: str) -> str:
    *head, last = words.split(" ")
    if last in _ORDINALS:
        last = _ORDINALS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def _number_token(match: re.Match[str]) -> str:
    token = match.group(0)
    if m := _ORDINAL_SUFFIX.match(token):
        return " " + _ordinal(number_to_words(int(m.group(1)))) + " "
    return " " + number_to_words(int(token)) + " "


def _time(match: re.Match[str]) -> str:
    hours, minutes = int(match.group(1)), int(match.group(2))
    if minutes == 0:
        return f" {hours} "
    if minutes < 10:
        return f" {hours} oh {minutes} "
    return f" {hours} {minutes} "


def normalize_text(text: str) -> str:
    """Lowercase, spell digits as words, drop punctuation (apostrophes too), squeeze spaces."""
    s = text.lower()
    s = _TIME.sub(_time, s)
    s = _THOUSANDS_SEP.sub("", s)
    s = _CURRENCY.sub(lambda m: f" {m.group(2)} {_CURRENCY_WORDS[m.group(1)]} ", s)
    s = _TITLES.sub(lambda m: _TITLE_WORDS[m.group(1)], s)
    for symbol, words in _SYMBOLS.items():
        s = s.replace(symbol, words)
    s = s.replace("-", " ")
    s = _DROP.sub(lambda m: "" if m.group(0) in "'’" else " ", s)
    s = _NUMBER.sub(_number_token, s)
    return " ".join(s.split())


def word_edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance over words (substitutions + deletions + insertions)."""
    prev = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        cur = [i] + [0] * len(hypothesis)
        for j, hyp_word in enumerate(hypothesis, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ref_word != hyp_word))
        prev = cur
    return prev[-1]


def word_errors(reference: str, hypothesis: str) -> int:
    """Word edit distance between two transcripts after `normalize_text`."""
    return word_edit_distance(normalize_text(reference).split(), normalize_text(hypothesis).split())
