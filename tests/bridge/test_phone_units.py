"""Phone parts without servers: the numbers file of ``voxbus sip`` (every mistake is one line
naming the entry), SIP addresses ``voxbus call`` takes, and how a failed call is told."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxbus.agents import Agent
from voxbus.agents.schema import SchemaError
from voxbus.contracts.control import CallReply
from voxbus.ops.call import describe
from voxbus.ops.sip import PhoneNumber, SipConfigError, load_config
from voxbus.services.bridge.dial import BadCallTarget, Target, failure

pytestmark = pytest.mark.fast


def test_a_numbers_file_names_agents_and_regions(tmp_path: Path) -> None:
    f = tmp_path / "numbers.toml"
    f.write_text('[[number]]\nnumber = "+15550100"\nagent = "frontdesk"\nregion = "eu"\n\n'
                 '[[number]]\nnumber = "+15550101"\n')
    config = load_config(f)
    assert config.numbers == [PhoneNumber("+15550100", "frontdesk", "eu"),
                              PhoneNumber("+15550101")]
    assert config.numbers[0].metadata == '{"agent": "frontdesk", "voxbus_region": "eu"}'
    assert config.numbers[1].metadata == ""


@pytest.mark.parametrize(("text", "says"), [
    ("", "no [[number]] entries"),
    ("[[number]]\nnumber = \"5550100\"\n", "number[0]: number '5550100' is not E.164"),
    ("[[number]]\nnumber = \"+15550100\"\nagent = \"Front Desk\"\n", "is not an agent name"),
    ("[[number]]\nnumber = \"+15550100\"\nagnet = \"x\"\n", "unknown key 'agnet'"),
    ("[[number]]\nnumber = \"+15550100\"\n[[number]]\nnumber = \"+15550100\"\n",
     "number[1]: +15550100 is listed twice"),
    ("[[number]\n", "not TOML"),
])
def test_a_wrong_numbers_file_is_one_line(tmp_path: Path, text: str, says: str) -> None:
    f = tmp_path / "numbers.toml"
    f.write_text(text)
    with pytest.raises(SipConfigError, match=None) as e:
        load_config(f)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_sip_addresses_and_failed_calls() -> None:
    assert Target.parse("sip:+15550100@pbx.example.com:5060") == Target(
        "+15550100", "pbx.example.com:5060")
    for bad in ("tel:+15550100", "sip:pbx.example.com", "+15550100"):
        with pytest.raises(BadCallTarget):
            Target.parse(bad)
    assert failure(RuntimeError("INVITE failed: sip status: 486 (BUSY_HERE)"))[0] == "busy"
    assert failure(RuntimeError("INVITE failed: sip status: 603 (DECLINE)"))[0] == "rejected"
    assert failure(RuntimeError("no response: timeout"))[0] == "no_answer"
    assert failure(RuntimeError("cpu exhausted"))[0] == "failed"
    assert describe(CallReply(ok=False, status="busy", error="busy: 486")) == "busy: 486"
    assert describe(CallReply(ok=False, error="no bridge is running for this region")) == (
        "failed: no bridge is running for this region")


def test_transfers_name_people_and_their_addresses() -> None:
    a = Agent(name="desk", instructions="You answer.", transfers={"kitchen": "tel:+15550199"})
    assert a.definition().transfers == {"kitchen": "tel:+15550199"}
    with pytest.raises(SchemaError, match="expected tel:"):
        Agent(name="desk", instructions="You answer.", transfers={"kitchen": "555-0199"})
    with pytest.raises(SchemaError, match="transfer name"):
        Agent(name="desk", instructions="You answer.", transfers={"The Kitchen": "tel:+1555"})
