"""Same audio, same transcript (issue 16).

The six fixtures, one session, fed several times through the STT stage on a real nats-server,
once on a quiet process and then while a second session and a second engine keep the cores busy:
the finals are identical, word for word and comma for comma, and identical to decoding the
segmenter's spans directly (nothing of a partial or of a discarded speculative decode leaks in).

And the finals do not depend on which CPU kernels CTranslate2 picks: the same spans decoded in
processes limited to AVX2 kernels (a machine without AVX-512) give the same texts. That is what
once failed: with int8 weights computed in int8, the same fixture read "Can you book a table for
four people?" on one machine and "Can you work at table for four people?" on another.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.stt.conftest import FIXTURES
from tests.stt.test_stage import Feed, pcm_of, running
from voxbus.audio import Float32Array, pcm16_to_float32
from voxbus.contracts.messages import EndOfTurn
from voxbus.runtime.bus import Bus
from voxbus.services.stt import turns
from voxbus.services.stt.engine import DEFAULT_COMPUTE_TYPE, WhisperEngine
from voxbus.services.stt.settings import SttSettings
from voxbus.services.stt.stage import SttStage
from voxbus.services.stt.vad import SileroVad

ROOT = Path(__file__).resolve().parents[2]
SPEED = 4.0  # times real time: several turns' decodes overlap the next utterance's frames


def final_spans() -> list[Float32Array]:
    """The audio of each final, as the stage's segmenter cuts the six fixtures in a row."""
    seg = turns.Segmenter(vad=SileroVad(), config=SttSettings().turn_config())
    pcm = b"".join(pcm_of(fx) for fx in FIXTURES)
    spans: list[Float32Array] = []
    for off in range(0, len(pcm), 640):
        for s in seg.push(pcm16_to_float32(pcm[off : off + 640], channels=1)):
            if isinstance(s.event, turns.EndOfTurn):
                assert s.audio is not None
                spans.append(s.audio)
    assert len(spans) == len(FIXTURES)
    return spans


@pytest.fixture(scope="module")
def reference(whisper: WhisperEngine) -> list[str]:
    return [whisper.transcribe(a).text for a in final_spans()]


class Hog:
    """A second engine decoding without pause on its own thread, at normal priority."""

    def __init__(self, engine: WhisperEngine) -> None:
        self._engine = engine
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hog", daemon=True)
        self.decodes = 0

    def _run(self) -> None:
        audio = FIXTURES[0].audio()
        while not self._stop.is_set():
            self._engine.transcribe(audio)
            self.decodes += 1

    def __enter__(self) -> Hog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def hog_engine() -> Iterator[WhisperEngine]:
    engine = WhisperEngine()
    yield engine


async def one_run(bus: Bus, stage: SttStage, session: str, *, neighbour: bool) -> list[str]:
    """The conversation once; with ``neighbour`` a second session speaks at the same time."""
    async with running(bus, stage) as tap:
        feeds = [Feed.on(bus, session, speed=SPEED).play(b"".join(pcm_of(fx) for fx in FIXTURES))]
        if neighbour:
            other = b"".join(pcm_of(fx) for fx in reversed(FIXTURES))
            feeds.append(Feed.on(bus, f"{session}-n", speed=SPEED * 0.7).play(other))
        await asyncio.gather(*feeds)
        want = len(FIXTURES) * (2 if neighbour else 1)
        await tap.until(lambda t: len(t.of(EndOfTurn)) == want, timeout_s=120)
    return [e.transcript for e in tap.of(EndOfTurn, session)]


@pytest.mark.model
async def test_the_same_audio_gives_the_same_finals_quiet_or_busy(
    bus: Bus, whisper: WhisperEngine, hog_engine: WhisperEngine, reference: list[str]
) -> None:
    runs = [await one_run(bus, SttStage(engine=whisper), "quiet", neighbour=False)]
    with Hog(hog_engine) as hog:
        for i in range(2):
            runs.append(await one_run(bus, SttStage(engine=whisper), f"busy{i}", neighbour=True))
    assert hog.decodes > 0
    for run in runs:
        assert run == reference, (run, reference)


@pytest.mark.model
def test_finals_do_not_depend_on_the_cpu_kernels(tmp_path: Path, reference: list[str]) -> None:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if " avx2" not in flags:
        pytest.skip("needs an x86-64 CPU with AVX2")
    spans = final_spans()
    shifted = {f"{i}-{shift:03d}": a[shift:] for i, a in enumerate(spans) for shift in (0, 160)}
    np.savez(tmp_path / "spans.npz", **shifted)  # type: ignore[arg-type]

    def decode(env: dict[str, str]) -> dict[str, str]:
        out = subprocess.run(
            [sys.executable, "-m", "tests.stt.spans_probe", str(tmp_path / "spans.npz"),
             DEFAULT_COMPUTE_TYPE["cpu"]],
            env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=240,
            check=True,
        ).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return {r["span"]: r["text"] for r in rows}

    native = decode({})
    assert [native[f"{i}-000"] for i in range(len(spans))] == reference
    avx2 = decode({"CT2_FORCE_CPU_ISA": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert avx2 == native
