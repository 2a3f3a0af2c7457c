"""The scenario file of ``voxbus eval`` and the checks of one turn (no server, no model), and its
bad inputs, each one line with exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxbus.cli import main as voxbus_main
from voxbus.errors import UserError
from voxbus.evals import cli
from voxbus.evals.runner import percentile
from voxbus.evals.scenarios import Call, check, module_spec, parse, read, same_value

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "frontdesk" / "eval.yaml"


def expect_of(text: str):  # type: ignore[no-untyped-def]
    f = parse(Path("t.yaml"), "module: m.py\nagent: a\nscenarios:\n  - turns:\n"
                              f"      - user: hi\n        expect: {text}\n")
    return f.scenarios[0].turns[0].expect


def c(name: str, args: str = "{}", ok: bool = True) -> Call:
    return Call(name, args, ok)


def test_the_example_file_reads_and_has_the_turns_it_promises() -> None:
    f = read(EXAMPLE)
    assert f.turns >= 20 and f.agents == {"frontdesk"}
    assert module_spec(f) == str(EXAMPLE.parent / "agent.py")
    assert f.env == {"FRONTDESK_DB": "{run_dir}/frontdesk.sqlite3"}
    expects = [t.expect for s in f.scenarios for t in s.turns]
    assert any(e.tools == () for e in expects)  # small talk: no tool
    assert any(e.check_handoff and e.handoff == "events" for e in expects)
    names = {t.name for e in expects for t in (e.tools or ())}
    assert {"check_availability", "book_table", "cancel_booking", "opening_hours",
            "end_call"} <= names


def test_tools_are_an_ordered_subset_with_subset_arguments() -> None:
    e = expect_of("{tools: [{name: check_availability, args: {people: 4, day: friday}}, "
                  "book_table]}")
    avail = c("check_availability", '{"day": "Friday ", "time": "7pm", "people": "4"}')
    assert check(e, [avail, c("book_table")], "", False) == []
    assert check(e, [avail, c("opening_hours"), c("book_table")], "", False) == []
    assert check(e, [c("book_table"), avail], "", False) == [
        "expected book_table(), called book_table()"]  # out of order
    wrong = c("check_availability", '{"day": "Saturday", "people": 4}')
    assert check(e, [wrong, c("book_table")], "", False) == [
        "expected check_availability(people=4, day=friday), called "
        "check_availability(day=Saturday, people=4)"]


def test_no_tools_handoffs_replies_and_ends() -> None:
    assert check(expect_of("{tools: []}"), [], "Hi!", False) == []
    assert check(expect_of("{tools: []}"), [c("end_call")], "", True) == [
        "expected no tool call, called end_call()"]
    assert check(expect_of("{}"), [c("end_call")], "", True) == []  # nothing checked
    handoff = expect_of("{handoff: events}")
    assert check(handoff, [c("transfer_to_events")], "", False) == []
    assert check(handoff, [c("transfer_to_events", ok=False)], "", False) == [
        "expected a handoff to events, got none"]
    assert check(expect_of("{handoff: null}"), [c("transfer_to_events")], "", False) == [
        "expected no handoff, got one to events"]
    reply = expect_of('{reply_matches: "(?i)rossi|booked"}')
    assert check(reply, [], "All BOOKED for you.", False) == []
    assert check(reply, [], "Sorry?", False) == ["reply does not match /(?i)rossi|booked/"]
    assert check(expect_of("{not_tools: [book_table], end_call: true}"), [c("book_table")],
                 "", False) == ["book_table must not be called, called book_table()",
                                "expected the call to end"]
    assert check(expect_of("{tools: [{name: book_table, ok: true}]}"),
                 [c("book_table", ok=False)], "", False) == [
        "expected book_table() ok=True, called book_table()!"]


def test_values_compare_as_the_file_means_them() -> None:
    assert same_value("Rossi", " rossi ") and same_value(4, "4") and same_value(4, 4.0)
    assert not same_value(4, "four") and not same_value("Rossi", "Rossi family")
    assert not same_value(True, 1) and same_value({"a": "X"}, {"a": "x", "b": 1})


def test_percentiles() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 21)], 0.95) == 19.0


@pytest.mark.parametrize(("text", "said"), [
    ("module: m.py\nscenarios: [\n", "not valid YAML (line 3)"),
    ("- just\n- a list\n", "expected a mapping, got list"),
    ("agent: a\nscenarios: [{turns: [{user: hi}]}]\n", "'module' is missing"),
    ("module: m.py\nagent: a\nscenarios: []\n", "'scenarios' is missing or empty"),
    ("module: m.py\nscenarios: [{turns: [{user: hi}]}]\n", "no agent"),
    ("module: m.py\nagent: a\nscenarios: [{turns: [{usr: hi}]}]\n", "unknown key 'usr'"),
    ("module: m.py\nagent: a\nscenarios: [{turns: [{user: hi, expect: {tool: []}}]}]\n",
     "unknown key 'tool'"),
    ("module: m.py\nagent: a\nscenarios: [{turns: [{user: hi, expect: {reply_matches: '('}}]}]"
     "\n", "bad regular expression"),
])
def test_bad_files_say_what_is_wrong(text: str, said: str) -> None:
    with pytest.raises(UserError, match=None) as info:
        parse(Path("t.yaml"), text)
    assert said in str(info.value) and str(info.value).startswith("t.yaml: ")


def _voxbus_eval(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = voxbus_main(["eval", *argv])
    err = capsys.readouterr().err.strip()
    return rc, err


def test_bad_input_is_one_line_and_status_2(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _voxbus_eval(capsys, str(tmp_path / "missing.yaml"))
    assert rc == 2 and err == f"voxbus eval: {tmp_path / 'missing.yaml'}: no such file"

    bad = tmp_path / "bad.yaml"
    bad.write_text("module: [\n")
    rc, err = _voxbus_eval(capsys, str(bad))
    assert rc == 2 and err.startswith(f"voxbus eval: {bad}: not valid YAML")

    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_here\n")
    f = tmp_path / "f.yaml"
    f.write_text("module: broken.py\nagent: a\nscenarios: [{turns: [{user: hi}]}]\n")
    rc, err = _voxbus_eval(capsys, str(f))
    assert rc == 2 and "failed to import: ModuleNotFoundError" in err and "\n" not in err

    f.write_text(f"module: {EXAMPLE.parent / 'agent.py'}\nagent: concierge\n"
                 "scenarios: [{turns: [{user: hi}]}]\n")
    rc, err = _voxbus_eval(capsys, str(f))
    assert rc == 2 and err == (f"voxbus eval: {f}: agent 'concierge' is not defined in "
                               f"{EXAMPLE.parent / 'agent.py'} (it defines events, frontdesk)")

    rc, err = _voxbus_eval(capsys, str(EXAMPLE), "--audio")
    assert rc == 2 and err == ("voxbus eval: --audio is not available yet: the turns go to the "
                               "LLM stage as text")
    rc, err = _voxbus_eval(capsys, str(EXAMPLE), "-k", "no such scenario")
    assert rc == 2 and "no scenario's name contains 'no such scenario'" in err


def test_the_model_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from voxbus.agents.loader import load

    monkeypatch.delenv("LLM_MODEL_NAME", raising=False)
    module = load(str(EXAMPLE.parent / "agent.py"))
    f = read(EXAMPLE)
    assert cli._model("qwen-0.5b", module, f) == "qwen-0.5b"
    assert cli._model(None, module, f) == cli.TOOLS_MODEL  # its agents have tools
    monkeypatch.setenv("LLM_MODEL_NAME", "qwen-0.5b")
    assert cli._model(None, module, f) == "qwen-0.5b"
