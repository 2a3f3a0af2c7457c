"""The whole voice loop under least privilege: a nats-server that requires the identities of
``voxbus nats --secure``, the real STT, LLM and TTS workers each logged in as its own role
(``VOXBUS_CREDENTIALS``, its own inbox prefix), a caller speaking as the bridge. A turn is
answered in full and the server logged no permission violation: the identities allow exactly
what the stages do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voxbus.dev.loop import VoiceLoop
from voxbus.services.stt.normalize import word_errors

pytestmark = pytest.mark.model

REGION = "sec"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "speech"


async def test_a_turn_is_answered_with_one_identity_per_role() -> None:
    item = json.loads((FIXTURES / "manifest.json").read_text())["items"][0]
    loop = VoiceLoop(region=REGION, echo=False, secure=True)
    await loop.start()
    try:
        assert loop.server is not None and loop.identities is not None
        users = {c.env.get("VOXBUS_CREDENTIALS", "") for c in loop.stages}
        assert all(u.endswith(f"-{REGION}.json") for u in users) and len(users) == 3
        caller = await loop.caller("secure1")
        r = await caller.say(FIXTURES / item["file"], float(item["speech_end_ms"]), timeout_s=40)
        await caller.close()
        assert not r.errors, r.errors
        assert word_errors(item["text"], r.transcript) <= 1, r.transcript
        assert r.reply.strip() and r.first_audio is not None
        violations = [line for line in loop.server.log_file.read_text().splitlines()
                      if "Violation" in line]
        assert not violations, "\n".join(violations[:10])
    finally:
        await loop.stop()
