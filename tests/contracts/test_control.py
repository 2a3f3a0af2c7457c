"""The wire facts outside the message union keep their JSON shape."""

from __future__ import annotations

import msgspec
import pytest

from voxbus.contracts import control

pytestmark = pytest.mark.fast


def test_dispatch_request_and_reply_are_the_documented_json() -> None:
    assert control.encode_json(control.DispatchRequest(room="r1")) == b'{"room":"r1"}'
    assert control.decode_dispatch_request(b'{"room":"r1","extra":1}').room == "r1"
    with pytest.raises(msgspec.ValidationError):
        control.decode_dispatch_request(b'{"room":""}')
    with pytest.raises(msgspec.ValidationError):
        control.decode_dispatch_request(b'{"rooms":"r1"}')
    reply = control.DispatchReply(ok=True, room="r1", sessions=["s"], ms=1.5)
    assert msgspec.json.decode(control.encode_json(reply)) == {
        "ok": True, "room": "r1", "sessions": ["s"], "ms": 1.5
    }
    assert control.decode_dispatch_reply(b'{"ok":false,"error":"no"}').error == "no"


def test_stt_state_is_json_with_the_last_turn() -> None:
    assert control.state_key("abc", control.STT_STATE) == "abc.stt"
    assert control.encode_json(control.SttTurnState(turn=9)) == b'{"turn":9}'
    assert control.decode_stt_state(b'{"turn":7}').turn == 7
    with pytest.raises(msgspec.ValidationError):
        control.decode_stt_state(b'{"turn":-1}')


def test_headers_are_case_insensitive() -> None:
    assert control.header({"voxbus-voice": " bf_emma "}, control.VOICE_HEADER) == "bf_emma"
    assert control.header(None, control.VOICE_HEADER) == ""
