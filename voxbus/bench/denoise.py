"""Noise suppression before the STT: what each engine costs per stream, and denoised copies of
WAV files for comparing word errors with another tool.

    python -m voxbus.bench.denoise [--engines dtln,deepfilter,rnnoise] [--seconds 60]
    python -m voxbus.bench.denoise --write DIR [WAV ...]

The cost: ``--seconds`` of 16 kHz speech (tests/fixtures/varied/*.wav, concatenated, repeated if
short) through one denoiser in 20 ms chunks, as a stream is fed, on one thread (onnxruntime
with one intra-op thread; BLAS/OpenMP/Rayon pools set to one before anything loads). Reported
per engine: the process CPU time over the audio time (x 100: % of one core per stream), the
wall-clock real-time factor, a 20 ms call's p50/p99, the time to build one, and its fixed delay.
Written to bench/results/denoise.json.

``--write DIR``: each WAV (any rate, down-mixed to 16 kHz mono) through each engine, written to
DIR/<engine>/<name>.wav, 16 kHz, as long as the input and sample-aligned with it (the engine's
delay is drained with silence and the start-up trimmed), so a transcript of it compares with the
original's; a manifest.json beside the WAVs is copied along. With no WAV named:
tests/fixtures/varied/*.wav.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

# One thread per stream, before numpy or a runtime starts its pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from voxbus.audio import (  # noqa: E402
    Float32Array,
    float32_to_pcm16,
    load_wav,
    pcm16_to_float32,
    read_wav,
    write_wav,
)
from voxbus.bench.report import print_table, summary_ms, write_json  # noqa: E402
from voxbus.services.stt.denoise import NAMES, OFF, Denoiser, make_denoiser  # noqa: E402

RATE = 16_000
CHUNK = RATE * 20 // 1000  # 20 ms
VARIED_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "varied"
ENGINES = [n for n in NAMES if n != OFF]


def speech(seconds: float) -> Float32Array:
    """``seconds`` of the varied fixtures (16 kHz mono PCM16), end to end."""
    parts = []
    for path in sorted(VARIED_DIR.glob("*.wav")):
        wav = read_wav(path)
        assert (wav.sample_rate_hz, wav.channels) == (RATE, 1), path
        parts.append(pcm16_to_float32(wav.pcm))
    audio = np.concatenate(parts)
    need = int(seconds * RATE)
    return np.tile(audio, -(-need // audio.size))[:need]


def _make(name: str) -> Denoiser:
    denoiser = make_denoiser(name)
    assert denoiser is not None
    return denoiser


def measure(name: str, audio: Float32Array) -> dict[str, Any]:
    t0 = time.perf_counter()
    denoiser = _make(name)
    load_s = time.perf_counter() - t0
    denoiser.process(audio[: RATE // 2])  # warm up (first-run allocations), then a new stream
    denoiser.reset()
    calls: list[float] = []
    out = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(0, audio.size, CHUNK):
        t = time.perf_counter()
        out += denoiser.process(audio[i:i + CHUNK]).size
        calls.append(time.perf_counter() - t)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    audio_s = audio.size / RATE
    assert out == audio.size - denoiser.delay_samples, (out, audio.size, denoiser.delay_samples)
    per_call = summary_ms(calls)
    return {
        "engine": name,
        "cpu_pct_of_core": round(100 * cpu / audio_s, 2),
        "rtf": round(wall / audio_s, 4),
        "call_p50_ms": per_call["p50_ms"],
        "call_p99_ms": per_call["p99_ms"],
        "delay_ms": round(denoiser.delay_ms, 2),
        "load_s": round(load_s, 3),
        "threads_cpu_over_wall": round(cpu / wall, 2),
    }


def denoise_whole(denoiser: Denoiser, audio: Float32Array) -> Float32Array:
    """``audio`` through a fresh stream in 20 ms chunks, drained: as long as ``audio``."""
    denoiser.reset()
    padded = np.concatenate((audio, np.zeros(denoiser.delay_samples, dtype=np.float32)))
    out = np.concatenate([denoiser.process(padded[i:i + CHUNK])
                          for i in range(0, padded.size, CHUNK)])
    assert out.size == audio.size, (out.size, audio.size)
    return out


def write(directory: Path, wavs: list[Path], engines: list[str]) -> None:
    for name in engines:
        denoiser = _make(name)
        folder = directory / name
        folder.mkdir(parents=True, exist_ok=True)
        for path in wavs:
            clean = denoise_whole(denoiser, load_wav(path, out_rate_hz=RATE))
            write_wav(folder / path.name, float32_to_pcm16(clean), sample_rate_hz=RATE)
        for manifest in {p.parent / "manifest.json" for p in wavs}:
            if manifest.is_file():  # the folder then reads like the fixtures it came from
                shutil.copyfile(manifest, folder / manifest.name)
        print(f"{name}: {len(wavs)} file(s) in {folder}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m voxbus.bench.denoise", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default=",".join(ENGINES),
                    help=f"comma-separated, of {', '.join(ENGINES)} (default: all)")
    ap.add_argument("--seconds", type=float, default=60.0, help="audio per engine (default 60)")
    ap.add_argument("--write", type=Path, metavar="DIR",
                    help="write denoised copies of WAV (default: the varied fixtures) to DIR")
    ap.add_argument("wavs", nargs="*", type=Path, metavar="WAV")
    args = ap.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if bad := [e for e in engines if e not in ENGINES]:
        ap.error(f"unknown engine(s) {', '.join(bad)}: use {', '.join(ENGINES)}")
    if args.write is not None:
        write(args.write, args.wavs or sorted(VARIED_DIR.glob("*.wav")), engines)
        return 0
    if args.wavs:
        ap.error("WAV files go with --write")
    audio = speech(args.seconds)
    rows = [measure(name, audio) for name in engines]
    print_table(f"noise suppression, one stream, {args.seconds:g} s of 16 kHz speech in "
                "20 ms chunks (cpu_pct_of_core: process CPU / audio time x 100)", rows)
    write_json("denoise", {"seconds": args.seconds, "chunk_ms": 20, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
