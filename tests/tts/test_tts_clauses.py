"""Synthesis units: a short first unit, sentence-sized later ones, exact spans."""

from __future__ import annotations

import random

import pytest

from voxbus.services.tts.clauses import Unit, UnitSplitter, iter_units, split_units

pytestmark = pytest.mark.fast

REPLIES = [
    "Sure, I can help you with that. The pharmacy closes at nine tonight, but the late-night "
    "one on Main Street is open until two.",
    "I can definitely help you with that today and tomorrow as well.",
    "Yes.",
    "OK, bye.",
    "I, for one, agree with you completely.",
    "Dr. Smith will see you at 9 a.m. Tomorrow works too. See e.g. the list.",
    "Hmm... let me think about it. Well — maybe!",
    "The years 1990–2000 were great, I think.",
    "Sure—I can do that.",
    "😀 Great news! Your order has shipped.",
    "Thank you so much for calling.",
    "First line\n- item one\n- item two",
    "It costs 3.50 dollars, or 1,200 yen; the 10:30 bus is faster.",
    '  He said "stop." Then he left.  ',
    "A long sentence " + "with many words and no commas at all " * 8 + "ends here.",
]


def texts(units: list[Unit]) -> list[str]:
    return [u.text for u in units]


def check_invariants(reply: str, units: list[Unit]) -> None:
    if not reply.strip():
        assert units == []
        return
    assert units[0].start == 0
    for before, after in zip(units, units[1:], strict=False):
        assert after.start == before.end
    assert units[-1].end == len(reply.rstrip())
    assert "".join(reply[u.start : u.end] for u in units) == reply.rstrip()
    for i, unit in enumerate(units):
        assert unit.index == i
        assert unit.text, "no empty units"
        assert unit.text == reply[unit.start : unit.end].strip()


@pytest.mark.parametrize("reply", REPLIES)
def test_spans_tile_the_reply(reply: str) -> None:
    check_invariants(reply, split_units(reply))


@pytest.mark.parametrize("reply", REPLIES)
@pytest.mark.parametrize("step", [1, 2, 3, 5, 11])
def test_streaming_gives_the_same_units(reply: str, step: int) -> None:
    chunks = [reply[i : i + step] for i in range(0, len(reply), step)]
    assert list(iter_units(chunks)) == split_units(reply)


def test_first_unit_is_cut_at_the_first_clause_mark() -> None:
    assert texts(split_units(REPLIES[0])) == [
        "Sure,",
        "I can help you with that.",
        "The pharmacy closes at nine tonight, but the late-night one on Main Street is open "
        "until two.",
    ]
    assert texts(split_units("OK, bye.")) == ["OK,", "bye."]
    assert texts(split_units("Sure—I can do that.")) == ["Sure—", "I can do that."]
    assert texts(split_units("Right: here it is.")) == ["Right:", "here it is."]
    assert texts(split_units("Well - maybe not.")) == ["Well -", "maybe not."]


def test_first_unit_is_never_a_one_letter_fragment() -> None:
    assert texts(split_units("I, for one, agree with you completely.")) == [
        "I, for one,",
        "agree with you completely.",
    ]
    assert split_units("A, B and C are fine.")[0].text == "A, B and C are fine."


def test_first_unit_without_punctuation_is_cut_after_about_five_words() -> None:
    assert texts(split_units("I can definitely help you with that today and tomorrow.")) == [
        "I can definitely help you",
        "with that today and tomorrow.",
    ]
    # one word earlier or later to land before a function word
    assert split_units("Let me quickly look for the answer right now.")[0].text == (
        "Let me quickly look"
    )
    assert split_units("Your appointment is booked tomorrow morning at ten sharp.")[0].text == (
        "Your appointment is booked tomorrow morning"
    )
    # a first sentence of up to seven words stays whole
    assert texts(split_units("Thank you so much for calling.")) == [
        "Thank you so much for calling."
    ]


def test_later_units_are_sentences() -> None:
    reply = "Sure, here goes. One. Two two. Three three three? Four!"
    assert texts(split_units(reply)) == [
        "Sure,",
        "here goes.",
        "One.",
        "Two two.",
        "Three three three?",
        "Four!",
    ]


def test_abbreviations_numbers_and_ranges_do_not_split() -> None:
    assert texts(split_units("Hello there. Dr. Smith will see you at 9 a.m. on Monday.")) == [
        "Hello there.",
        "Dr. Smith will see you at 9 a.m. on Monday.",
    ]
    assert texts(split_units("Okay. It costs 3.50 dollars, or 1,200 yen at 10:30.")) == [
        "Okay.",
        "It costs 3.50 dollars, or 1,200 yen at 10:30.",
    ]
    assert split_units("The years 1990–2000 were great, I think.")[0].text == (
        "The years 1990–2000 were great,"
    )


def test_long_sentences_are_split_at_commas_within_the_cap() -> None:
    clause = "and then we walked a little further along the river"
    reply = "Okay. " + ", ".join([clause] * 8) + "."
    units = split_units(reply)
    check_invariants(reply, units)
    assert all(len(u.text) <= 200 for u in units)
    assert all(u.text.endswith((",", ".")) for u in units)
    assert len(units) >= 4


def test_long_sentence_without_commas_is_split_at_spaces() -> None:
    reply = "Okay. " + "word " * 100
    units = split_units(reply)
    check_invariants(reply, units)
    assert all(len(u.text) <= 200 for u in units)
    assert all(not u.text.endswith("wor") for u in units)


def test_ramp_caps_early_units() -> None:
    reply = (
        "Sure, I can help you with that. The pharmacy closes at nine tonight, but the late-night "
        "one on Main Street is open until two in the morning."
    )
    units = split_units(reply, UnitSplitter(ramp=(40, 80)))
    check_invariants(reply, units)
    assert texts(units)[2] == "The pharmacy closes at nine tonight,"
    assert len(units[1].text) <= 40 and len(units[2].text) <= 80


def test_whitespace_punctuation_and_emoji_replies() -> None:
    assert split_units("") == []
    assert split_units("   \n ") == []
    assert texts(split_units("...")) == ["..."]
    # a trailing emoji cannot be known in advance: it becomes its own (silent) unit
    assert texts(split_units("Great! 🎉")) == ["Great!", "🎉"]
    # a unit is never only punctuation while more text follows
    assert texts(split_units("... Okay, then.")) == ["... Okay,", "then."]


def test_units_are_emitted_as_soon_as_complete() -> None:
    splitter = UnitSplitter()
    assert splitter.push("Sure") == []
    assert splitter.push(",") == []  # "1,000" or "Sure, ": the next character decides
    assert texts(splitter.push(" I")) == ["Sure,"]
    assert splitter.push(" can help.") == []
    assert texts(splitter.push(" Next")) == ["I can help."]
    assert texts(splitter.finish()) == ["Next"]
    assert splitter.finish() == []
    with pytest.raises(RuntimeError):
        splitter.push("more")


def test_random_replies_keep_the_invariants() -> None:
    rng = random.Random(7)
    words = ["I", "a", "can", "help", "you", "the", "pharmacy", "Dr.", "3.5", "e.g.", "😀"]
    marks = ["", "", "", ",", ".", "?", "!", ";", ":", " —", "...", "\n"]
    for _ in range(300):
        reply = " ".join(rng.choice(words) + rng.choice(marks) for _ in range(rng.randint(0, 60)))
        units = split_units(reply)
        check_invariants(reply, units)
        first = units[0].text if units else ""
        assert len(first.split()) <= 7 or len(first) <= 200
        for later in units[1:]:
            assert len(later.text) <= 200
        step = rng.randint(1, 9)
        chunks = [reply[i : i + step] for i in range(0, len(reply), step)]
        assert list(iter_units(chunks)) == units


def test_invalid_options() -> None:
    with pytest.raises(ValueError):
        UnitSplitter(first_words=1)
    with pytest.raises(ValueError):
        UnitSplitter(max_chars=5)
