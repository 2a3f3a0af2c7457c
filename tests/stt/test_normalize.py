from __future__ import annotations

import pytest

from voxbus.services.stt.normalize import normalize_text, number_to_words, word_errors

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The meeting starts at 10 in the morning.", "the meeting starts at ten in the morning"),
        ("Can you book a table for 4 people?", "can you book a table for four people"),
        ("It's 9:30, isn't it?", "its nine thirty isnt it"),
        ("Meet at 7:00 or 7:05!", "meet at seven or seven oh five"),
        ("Platform 2nd; 21st; 103rd.", "platform second twenty first one hundred third"),
        (
            "About 1,250 people - 50% off & more",
            "about one thousand two hundred fifty people fifty percent off and more",
        ),
        ("  Turn   LEFT... ", "turn left"),
        ("well-known 'quotes'", "well known quotes"),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (13, "thirteen"),
        (40, "forty"),
        (99, "ninety nine"),
        (100, "one hundred"),
        (2_024, "two thousand twenty four"),
        (3_000_001, "three million one"),
    ],
)
def test_number_to_words(n: int, words: str) -> None:
    assert number_to_words(n) == words


def test_word_errors_counts_edits_after_normalisation() -> None:
    ref = "The meeting starts at ten in the morning."
    assert word_errors(ref, "the meeting starts at 10 in the morning") == 0
    assert word_errors(ref, "The meeting starts at 10 in the evening.") == 1
    assert word_errors(ref, "meeting starts at 10 in the morning today") == 2
    assert word_errors("", "hello") == 1


def test_amounts_and_titles_are_compared_as_said() -> None:
    assert word_errors("transfer two hundred dollars", "transfer $200") == 0
    assert word_errors("the meeting with Doctor Patel", "the meeting with Dr. Patel") == 0
