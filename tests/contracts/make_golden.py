"""Writes golden_v1.msgpack (one encoded message of every type as version 1 produced them) and
golden_v2.msgpack (what version 2 added: speculative turns). Never regenerate a written file
for a newer version: it is the proof that old messages still decode; write the next one."""

from __future__ import annotations

from pathlib import Path

import msgspec

import voxbus.contracts.messages as m

SAMPLES: list[m.Message] = [
    m.AudioIn(session="s1", turn=1, seq=7, sample_rate_hz=48000, channels=2, capture_ns=1,
              pcm=b"\x01\x00" * 8, participant="caller"),
    m.Transcript(session="s1", turn=1, seq=0, text="hello there", is_final=True,
                 speech_start_ns=10, speech_end_ns=20, decode_ms=1.5),
    m.ReplyText(session="s1", turn=1, seq=0, text="Hi,", char_start=0, char_end=3),
    m.ReplyEnd(session="s1", turn=1, text="Hi, how can I help?", reason="done"),
    m.AudioOut(session="s1", turn=1, seq=3, sample_rate_hz=24000, pcm=b"\0\0" * 4, text_end=3),
    m.SessionStarted(session="s1", room="r", participant="caller", at_ns=5),
    m.SessionEnded(session="s1", reason="left", at_ns=6),
    m.UserStartedSpeaking(session="s1", turn=1, at_ns=7),
    m.UserStoppedSpeaking(session="s1", turn=1, at_ns=8),
    m.EndOfTurn(session="s1", turn=1, transcript="hello there", speech_start_ns=10,
                speech_end_ns=20),
    m.Interrupt(session="s1", turn=1, at_ns=9),
    m.AgentSpoke(session="s1", turn=1, text="Hi,", char_end=3, interrupted=True),
    m.ErrorEvent(session="s1", code="bad_message", message="x"),
    m.PurgeRequested(session="s1", region="eu", request_id="r1", requested_by="ops"),
    m.PurgeCompleted(session="s1", region="eu", request_id="r1", removed={"VOXBUS_EU_AUDIO": 3}),
]

V2_SAMPLES: list[m.Message] = [
    m.EndOfTurn(session="s1", turn=2, transcript="a table for", speech_start_ns=30,
                speech_end_ns=40, speculative=True, speculation=1),
    m.TurnResumed(session="s1", turn=2, speculation=1, at_ns=41),
    m.ReplyText(session="s1", turn=2, seq=0, text="Sure,", char_start=0, char_end=5,
                speculation=2),
    m.AudioOut(session="s1", turn=2, seq=0, sample_rate_hz=24000, pcm=b"\0\0", text_end=5,
               speculation=2),
]

#: Agents: a tool call, a reply's voice, agent and tools, the session's agent.
V3_SAMPLES: list[m.Message] = [
    m.ToolCall(session="s1", call_id="t2-s0-r1-c0", agent="frontdesk", tool="book_table",
               arguments='{"name": "Rossi", "people": 4}', timeout_s=5.0, at_ns=50),
    m.ReplyText(session="s1", turn=2, seq=0, text="Booked.", char_start=0, char_end=7,
                voice="amy"),
    m.ReplyEnd(session="s1", turn=2, text="Booked.", agent="frontdesk",
               tools=[m.CalledTool(name="book_table", arguments='{"people": 4}')]),
    m.SessionStarted(session="s1", room="r", participant="p", agent="frontdesk"),
]

#: Crypto-shredding: a sealed payload (its box is opaque bytes here).
V4_SAMPLES: list[m.Message] = [
    m.Sealed(session="s1", turn=3, kind="stt.transcript", seq=1, at_ns=70,
             box=b"\x01" * 12 + b"ciphertext-and-tag"),
]

GOLDEN: dict[str, list[m.Message]] = {"golden_v1.msgpack": SAMPLES,
                                      "golden_v2.msgpack": V2_SAMPLES,
                                      "golden_v3.msgpack": V3_SAMPLES,
                                      "golden_v4.msgpack": V4_SAMPLES}

if __name__ == "__main__":
    for name, samples in GOLDEN.items():
        out = Path(__file__).with_name(name)
        if out.exists():
            continue
        out.write_bytes(msgspec.msgpack.encode([m.encode(s) for s in samples]))
        print(f"wrote {out}")
