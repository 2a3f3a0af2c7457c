from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import pytest

from voxbus.services.llm.clauses import ClauseChunker, chunk_clauses


def run(tokens: Iterable[str], **kwargs: int) -> list[str]:
    chunker = ClauseChunker(**kwargs)
    out: list[str] = []
    for token in tokens:
        out.extend(chunker.push(token))
    out.extend(chunker.flush())
    return out


def chars(text: str) -> list[str]:
    """Feed one character at a time: the hardest tokenization."""
    return list(text)


def test_first_chunk_at_comma_then_sentences() -> None:
    text = "Sure, I can help with that. The pharmacy closes at nine. Anything else?"
    expected = ["Sure,", "I can help with that.", "The pharmacy closes at nine.", "Anything else?"]
    assert run(chars(text)) == expected
    assert run(text.split(" ")) != []  # word tokens without spaces still never crash


def test_first_chunk_leaves_before_the_sentence_ends() -> None:
    chunker = ClauseChunker()
    assert chunker.push("Sure") == []
    assert chunker.push(",") == []  # the break is confirmed by what follows
    assert chunker.push(" I") == ["Sure,"]


def test_first_chunk_after_five_words_without_punctuation() -> None:
    text = "The capital of France is Paris and it is lovely. Yes."
    assert run(chars(text)) == ["The capital of France is", "Paris and it is lovely.", "Yes."]


def test_first_max_words_is_configurable() -> None:
    out = run(chars("one two three four five six."), first_max_words=3)
    assert out == ["one two three", "four five six."]


def test_never_splits_inside_a_word() -> None:
    chunker = ClauseChunker(first_max_words=2)
    assert chunker.push(" hello wor") == []
    assert chunker.push("ld again") == ["hello world"]


def test_only_the_first_chunk_breaks_on_commas() -> None:
    text = "Well, first, second, third. Then a, b, c. End"
    assert run(chars(text)) == ["Well,", "first, second, third.", "Then a, b, c.", "End"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It costs 3.5 dollars today. Ok", ["It costs 3.5 dollars today.", "Ok"]),
        ("Call Dr. Smith about it now. Ok", ["Call Dr. Smith about it", "now.", "Ok"]),
        ("Bring fruit, e.g. apples. Ok", ["Bring fruit,", "e.g. apples.", "Ok"]),
        ("Use tools i.e. hammers here. Ok", ["Use tools i.e. hammers here.", "Ok"]),
        ("We open at 9:30 sharp. Ok", ["We open at 9:30 sharp.", "Ok"]),
        ("About 1,000 people came. Ok", ["About 1,000 people came.", "Ok"]),
        ("J. R. R. Tolkien wrote it. Ok", ["J. R. R. Tolkien wrote", "it.", "Ok"]),
        ("1. Paris is first. Ok", ["1. Paris is first.", "Ok"]),
    ],
)
def test_no_break_on_decimals_abbreviations_and_numbers(text: str, expected: list[str]) -> None:
    assert run(chars(text)) == expected


def test_sentence_ends_with_quotes_and_repeated_punctuation() -> None:
    text = 'He said "hi." Really?! Yes... fine.'
    assert run(chars(text)) == ['He said "hi."', "Really?!", "Yes...", "fine."]


def test_em_dash_and_semicolon_break_the_first_chunk() -> None:
    assert run(chars("Paris—the capital. Ok")) == ["Paris—", "the capital.", "Ok"]
    assert run(chars("Right; so here we go. Ok")) == ["Right;", "so here we go.", "Ok"]


def test_newline_breaks() -> None:
    assert run(chars("Hi there\nNext line here. Done")) == ["Hi there", "Next line here.", "Done"]


def test_long_sentence_is_cut_at_a_clause_break() -> None:
    long = "First. " + "word " * 20 + "middle, " + "more " * 20 + "end."
    out = run(chars(long), max_chars=120)
    assert out[0] == "First."
    assert out[1].endswith("middle,")
    assert all(len(chunk) <= 120 for chunk in out)
    assert " ".join(out).split() == long.split()


def test_long_sentence_without_clause_break_is_cut_at_a_space() -> None:
    long = "First. " + "word " * 60 + "end."
    out = run(chars(long), max_chars=50)
    assert all(len(chunk) <= 50 for chunk in out)
    assert " ".join(out).split() == long.split()


def test_flush_resets_for_the_next_reply() -> None:
    chunker = ClauseChunker()
    assert chunker.push("Hello there") == []
    assert chunker.flush() == ["Hello there"]
    assert chunker.flush() == []
    assert chunker.push("Yes,") == []
    assert chunker.push(" ok") == ["Yes,"]


def test_reset_drops_pending_text() -> None:
    chunker = ClauseChunker()
    chunker.push("Half a sent")
    chunker.reset()
    assert chunker.flush() == []


def test_whitespace_only_and_empty_input() -> None:
    assert run([]) == []
    assert run(["  ", "\n", " "]) == []


async def test_async_form() -> None:
    async def tokens() -> AsyncIterator[str]:
        for token in ["Sure", ",", " it", " is", " done", ".", " Bye"]:
            yield token

    assert [c async for c in chunk_clauses(tokens())] == ["Sure,", "it is done.", "Bye"]
