from __future__ import annotations

from collections.abc import Iterable
from itertools import count

import pytest

from voxbus.services.llm.engine import TextDelta, ToolCallDelta
from voxbus.services.llm.toolcall_parser import ToolCallExtractor

pytestmark = pytest.mark.fast


def extract(pieces: Iterable[str]) -> tuple[list[TextDelta | ToolCallDelta], ToolCallExtractor]:
    ids = count(1)
    extractor = ToolCallExtractor(id_factory=lambda: f"c{next(ids)}")
    out: list[TextDelta | ToolCallDelta] = []
    for piece in pieces:
        out.extend(extractor.feed(piece))
    out.extend(extractor.finish())
    return out, extractor


def joined_text(deltas: list[TextDelta | ToolCallDelta]) -> str:
    return "".join(d.text for d in deltas if isinstance(d, TextDelta))


def test_plain_text_streams_through_immediately() -> None:
    extractor = ToolCallExtractor()
    assert extractor.feed("Hello") == [TextDelta("Hello")]
    assert extractor.feed(" world <") == [TextDelta(" world ")]  # "<" may open a tag
    assert extractor.feed("3 things") == [TextDelta("<3 things")]


def test_tool_call_split_across_pieces() -> None:
    text = (
        'Let me check.<tool_call>\n{"name": "get_current_time", '
        '"arguments": {"timezone": "UTC"}}\n</tool_call>'
    )
    out, extractor = extract(list(text))
    assert joined_text(out) == "Let me check."
    calls = [d for d in out if isinstance(d, ToolCallDelta)]
    expected = ToolCallDelta(id="c1", name="get_current_time", arguments='{"timezone": "UTC"}')
    assert calls == [expected]
    assert extractor.calls == 1


def test_smollm2_list_form_and_unclosed_block() -> None:
    out, _ = extract(
        ['<tool_call>[{"name": "end_call", "arguments": {}}, {"name": "get_current_time"}]']
    )
    assert [d.name for d in out if isinstance(d, ToolCallDelta)] == ["end_call", "get_current_time"]
    assert [d.arguments for d in out if isinstance(d, ToolCallDelta)] == ["{}", "{}"]


def test_malformed_block_is_dropped_not_spoken() -> None:
    out, extractor = extract(["Hi <tool_call>{broken</tool_call> there"])
    assert joined_text(out) == "Hi  there"
    assert extractor.malformed == 1 and extractor.calls == 0


def test_partial_tag_at_the_end_is_flushed_as_text() -> None:
    out, _ = extract(["See you <tool"])
    assert joined_text(out) == "See you <tool"


def extract_bare(pieces: Iterable[str]) -> tuple[list[TextDelta | ToolCallDelta],
                                                 ToolCallExtractor]:
    ids = count(1)
    extractor = ToolCallExtractor(id_factory=lambda: f"c{next(ids)}", bare_json=True)
    out: list[TextDelta | ToolCallDelta] = []
    for piece in pieces:
        out.extend(extractor.feed(piece))
    out.extend(extractor.finish())
    return out, extractor


QWEN_BARE = ['{"', "name", '":', ' "', "get", "_current", "_time", '",', ' "', "arguments", '":',
             ' {"', "timezone", '":', ' "', "Asia", "/T", "ok", "yo", '"}}']  # fmt: skip


def test_bare_call_object_as_qwen_coder_streams_it() -> None:
    out, extractor = extract_bare(QWEN_BARE)
    assert out == [ToolCallDelta("c1", "get_current_time", '{"timezone": "Asia/Tokyo"}')]
    assert extractor.calls == 1


def test_bare_calls_one_after_another_then_text() -> None:
    text = ' {"name": "a", "arguments": {}}\n{ "name" : "b", "arguments": {"x": "}"}}\nDone.'
    out, _ = extract_bare(list(text))
    assert [d.name for d in out if isinstance(d, ToolCallDelta)] == ["a", "b"]
    assert joined_text(out) == "\nDone."


def test_bare_mode_lets_text_and_tags_through() -> None:
    extractor = ToolCallExtractor(bare_json=True)
    assert extractor.feed("Hello") == [TextDelta("Hello")]  # at once: it cannot be a call
    out, _ = extract_bare(["{", "curly} braces"])
    assert joined_text(out) == "{curly} braces"
    out, _ = extract_bare(['<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>'])
    assert [d.name for d in out if isinstance(d, ToolCallDelta)] == ["a"]


def test_a_cut_bare_call_is_dropped_never_spoken() -> None:
    out, extractor = extract_bare(QWEN_BARE[:-3])
    assert out == [] and extractor.malformed == 1


def test_bare_json_is_off_by_default() -> None:
    out, _ = extract(QWEN_BARE)
    assert joined_text(out) == "".join(QWEN_BARE)


@pytest.mark.fast
def test_a_call_in_tools_tags_is_a_call_too() -> None:
    """Qwen2.5-Coder sometimes wraps its call in the tag its prompt lists the tools in."""
    x = ToolCallExtractor(id_factory=lambda: "c1", bare_json=True)
    out = []
    for piece in ["<to", "ols>\n", '{"name": "opening_hours", "arguments": {"day": "Sunday"}}',
                  "\n</to", "ols>"]:
        out += x.feed(piece)
    out += x.finish()
    assert out == [ToolCallDelta(id="c1", name="opening_hours", arguments='{"day": "Sunday"}')]


@pytest.mark.fast
def test_an_imitated_tool_response_is_never_spoken() -> None:
    x = ToolCallExtractor(id_factory=lambda: "c1", bare_json=True)
    out = []
    for piece in ["<tool_res", 'ponse>\n{"day": "Monday"}\n</tool_', "response> We are ",
                  "closed.", "<tool_response>{"]:
        out += x.feed(piece)
    out += x.finish()
    assert "".join(d.text for d in out if isinstance(d, TextDelta)) == " We are closed."
    assert x.echoes == 2 and x.calls == 0


@pytest.mark.fast
def test_a_json_object_that_is_no_call_is_never_spoken() -> None:
    x = ToolCallExtractor(id_factory=lambda: "c1", bare_json=True)
    out = x.feed('\n{"error": "unknown tool \'opening_hours\'"}\nWe open at noon.') + x.finish()
    assert "".join(d.text for d in out if isinstance(d, TextDelta)).strip() == "We open at noon."
    assert x.calls == 0 and x.malformed == 1
