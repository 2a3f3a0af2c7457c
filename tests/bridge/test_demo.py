"""``voxbus demo``: its guard rails, and (inside the namespace) one real run end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from voxbus.dev import demo, livekit_server, supervise
from voxbus.errors import UserError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.fast
def test_missing_livekit_server_says_run_dev_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """One line from ``voxbus.cli`` (``tests/test_cli_errors.py`` runs the real command)."""
    monkeypatch.delenv("LIVEKIT_SERVER_BIN", raising=False)
    monkeypatch.setattr(livekit_server, "REPO", Path("/nonexistent"))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match=r"run \./dev setup.*--bus-only"):
        demo.main([])


@pytest.mark.fast
def test_supervised_child_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(supervise.SUPERVISED_ENV, "1")
    assert supervise.run_supervised("voxbus.dev.demo", [], want_netns=True) is None


@pytest.mark.livekit
@pytest.mark.model
def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "answer.wav"
    env = {k: v for k, v in os.environ.items() if k != supervise.SUPERVISED_ENV}
    proc = subprocess.run(
        [sys.executable, "-m", "voxbus.dev.demo", "--out", str(out)], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=240, check=False,
    )
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.returncode == 0
    assert "network: inside a private network namespace" in proc.stdout
    assert "first agent audio at the caller" in proc.stdout
    said = next(line for line in proc.stdout.splitlines() if line.startswith("user said"))
    assert "museum" in said.lower()  # Opus: the transcript varies a little from run to run
    assert "agent answered  : ''" not in proc.stdout
    with wave.open(str(out)) as w:
        assert w.getnframes() / w.getframerate() > 0.5
