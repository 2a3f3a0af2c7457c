"""``voxbus cost``: sessions per worker from the stage benchmarks' results (measured where a
level broke the latency target, estimated beyond the levels measured), dollars per call-minute,
and one line when a result is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voxbus.bench.cost import capacities, main

pytestmark = pytest.mark.fast


def _results(tmp_path: Path, stt_levels: list[tuple[int, float]]) -> Path:
    (tmp_path / "stt.json").write_text(json.dumps({
        "worker": {"decode_p50_ms": {"final": 500.0, "partial": 500.0}},
        "levels": [{"sessions": n, "final_p50_ms": p50, "partials_per_turn": 2.0}
                   for n, p50 in stt_levels]}))
    (tmp_path / "llm.json").write_text(json.dumps({
        "config": {}, "summary": [
            {"kind": "warm", "reply": {"p50_ms": 600.0}, "first_text": {"p50_ms": 150.0}}]}))
    (tmp_path / "tts.json").write_text(json.dumps({
        "synth_rtf": 0.1, "rows": [
            {"scenario": "1 concurrent session(s)", "first_audio_p50_ms": 50.0},
            {"scenario": "2 concurrent session(s)", "first_audio_p50_ms": 250.0}]}))
    return tmp_path


def test_measured_where_a_level_broke_estimated_beyond(tmp_path: Path) -> None:
    caps = {c.stage: c for c in capacities(
        _results(tmp_path, [(1, 700.0), (2, 790.0), (3, 900.0)]),
        turns_per_min=6, agent_speech_s=4, utilization=0.7)}
    assert (caps["stt"].sessions, caps["stt"].how) == (2, "measured")  # 3 broke 800 ms
    assert (caps["tts"].sessions, caps["tts"].how) == (1, "measured")  # 2 broke 200 ms
    # 6 replies of 0.6 s a minute on 2 engines at 70 %: 2 * 60 * 0.7 / 3.6
    assert (caps["llm"].sessions, caps["llm"].how) == (23, "estimated")


def test_the_command_prints_the_total_and_writes_json(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("voxbus.bench.report.RESULTS_DIR", tmp_path / "out")
    results = _results(tmp_path, [(1, 700.0), (2, 700.0)])
    assert main(["--results", str(results), "--price", "cpu-2vcpu=0.12"]) == 0
    out = capsys.readouterr().out
    assert "reference design says $0.029" in out and "dominates" in out
    written = json.loads((tmp_path / "out" / "cost.json").read_text())
    stt = next(r for r in written["rows"] if r["stage"] == "stt")
    assert stt["dollars_per_call_minute"] == pytest.approx(0.12 / 60 / stt["sessions_per_worker"],
                                                           rel=1e-3)


def test_a_missing_result_is_one_line(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "voxbus bench stt" in err
