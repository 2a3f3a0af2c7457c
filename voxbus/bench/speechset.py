"""The hearing benchmark's speech: 30 requests a caller makes of a business agent, none of them
said by any test fixture, spoken by six voices (three Kokoro, Piper's joe, two espeak-ng) at
three speeds and two levels, each in three copies: clean, under pink noise (10 dB) and under
the babble of three other talkers (12 dB) that goes on before and after the caller speaks.

Made on first use with the TTS engines setup installs (and ``espeak-ng``), about a minute on two
cores, and kept under ``~/.cache/voxbus/bench/hearing-<version>/`` (16 kHz mono WAV and
``manifest.json``); nothing is committed but this file. Change anything that shapes the audio
and bump ``VERSION``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxbus.audio import (
    Float32Array,
    float32_to_pcm16,
    pcm16_to_float32,
    read_wav,
    resample,
    write_wav,
)
from voxbus.errors import UserError
from voxbus.services.stt.audio import load_wav_16k_mono

VERSION = 1
RATE_HZ = 16_000
LEAD_S, TAIL_S = 0.6, 1.5
CONDITIONS = ("clean", "noise", "babble")
NOISE_SNR_DB, BABBLE_SNR_DB = 10.0, 12.0

SENTENCES = [
    "Could you check whether my refund has gone through?",
    "I want to change my delivery address to Elm Street.",
    "Please cancel the gym membership I signed up for in March.",
    "My internet has been dropping out every evening.",
    "Can I get a window seat on the morning flight to Chicago?",
    "I'd like to book a haircut for Saturday afternoon.",
    "How much would it cost to upgrade my phone plan?",
    "The package arrived damaged and I want a replacement.",
    "Can you reschedule my car service to next Tuesday?",
    "I was charged twice for the same dinner.",
    "Please add my wife to the reservation.",
    "Is it possible to pay the bill in two parts?",
    "My password reset email never arrived.",
    "I need to report a leak under the bathroom sink.",
    "What are your opening hours on public holidays?",
    "Could you send the invoice to my work email instead?",
    "I would like to return these shoes, they are too small.",
    "Can you tell me if the train from Leeds is running late?",
    "Please book a double room for three nights starting Monday.",
    "Why is my account showing a negative balance?",
    "I lost my card, can you block it right away?",
    "We need a table for six near the window.",
    "Has my prescription been sent to the pharmacy yet?",
    "I want to speak to someone about my insurance claim.",
    "Can you move the meeting with Doctor Patel to the afternoon?",
    "The heater in the apartment makes a loud rattling noise.",
    "Please put the order on hold until I get back.",
    "Do you deliver to the north side of the city on weekends?",
    "I would like to transfer two hundred dollars to my savings.",
    "Could you remind me what time my appointment is tomorrow?",
]
VOICES = ["kokoro:af_heart", "piper:joe", "kokoro:am_michael", "espeak:en-us",
          "kokoro:bf_emma", "espeak:en-gb+m3"]
SPEEDS = (1.0, 0.85, 1.2)
LEVELS = (0.5, 0.25)  # peak of the speech


@dataclass(frozen=True, slots=True)
class Clip:
    name: str
    text: str
    voice: str
    speed: float
    condition: str
    path: Path
    speech_start_ms: int
    speech_end_ms: int

    def audio(self) -> Float32Array:
        return load_wav_16k_mono(self.path)


Items = list[dict[str, Any]]


def clean_copy(clip: Clip) -> Clip:
    """The clean copy of a clip (the same speech without noise or talk behind it)."""
    name = f"{clip.name.rsplit('-', 1)[0]}-clean"
    return Clip(name=name, text=clip.text, voice=clip.voice, speed=clip.speed, condition="clean",
                path=clip.path.with_name(f"{name}.wav"), speech_start_ms=clip.speech_start_ms,
                speech_end_ms=clip.speech_end_ms)


def cached(name: str, version: int, make: Callable[[Path], Items]) -> tuple[Path, Items]:
    """A made set of clips kept under ``~/.cache/voxbus/bench/<name>-<version>/``: the first
    time, ``make(folder)`` writes its WAVs into a fresh folder and returns the manifest's items,
    and the folder takes the set's place whole. Returns the set's folder and its items."""
    root = Path.home() / ".cache" / "voxbus" / "bench" / f"{name}-{version}"
    manifest = root / "manifest.json"
    if not manifest.exists():
        tmp = root.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        items = make(tmp)
        (tmp / "manifest.json").write_text(json.dumps(
            {"version": version, "sample_rate_hz": RATE_HZ, "items": items}, indent=1) + "\n")
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    return root, json.loads(manifest.read_text())["items"]


def load(progress: Callable[[str], None] = print) -> list[Clip]:
    """The set, made first if it is not in the cache."""
    root, items = cached("hearing", VERSION, lambda folder: _make(folder, progress))
    return [Clip(name=it["name"], text=it["text"], voice=it["voice"], speed=it["speed"],
                 condition=it["condition"], path=root / it["file"],
                 speech_start_ms=it["speech_start_ms"], speech_end_ms=it["speech_end_ms"])
            for it in items]


def _espeak(voice: str, text: str, speed: float) -> tuple[Float32Array, int]:
    if shutil.which("espeak-ng") is None:
        raise UserError("espeak-ng is missing: apt-get install -y espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(round(165 * speed)), "-w", str(path),
                        text], check=True)
        wav = read_wav(path)
    return pcm16_to_float32(wav.pcm, channels=1), wav.sample_rate_hz


class Voices:
    """Speech in a voice (``kokoro:NAME``, ``piper:joe``, ``espeak:NAME``) at a speed: one engine
    per (kind, speed), loaded when first needed."""

    def __init__(self) -> None:
        self._engines: dict[tuple[str, float], object] = {}

    def speak(self, voice: str, text: str, speed: float) -> tuple[Float32Array, int]:
        kind, name = voice.split(":")
        if kind == "espeak":
            return _espeak(name, text, speed)
        key = (kind, speed)
        if kind == "piper":
            from voxbus.services.tts.piper import PiperEngine

            piper = self._engines.get(key)
            if not isinstance(piper, PiperEngine):
                piper = self._engines[key] = PiperEngine(speed=speed)
            return piper.synthesize(text), 24_000
        from voxbus.services.tts.engine import KokoroEngine

        kokoro = self._engines.get(key)
        if not isinstance(kokoro, KokoroEngine):
            kokoro = self._engines[key] = KokoroEngine(speed=speed)
        return kokoro.synthesize(text, name), 24_000


def trim(audio: Float32Array, rate_hz: int) -> Float32Array:
    """The speech without the engine's leading and trailing quiet (-40 dB of the loudest 10 ms)."""
    frame = rate_hz // 100
    n = audio.size // frame
    if n == 0:
        return audio
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1))
    loud = np.flatnonzero(rms >= rms.max() * 0.01)
    return audio[loud[0] * frame:(loud[-1] + 1) * frame]


def _pink(n: int, rng: np.random.Generator) -> Float32Array:
    spectrum = np.fft.rfft(rng.normal(0.0, 1.0, n))
    f = np.arange(spectrum.size, dtype=np.float64)
    f[0] = 1.0
    return np.fft.irfft(spectrum / np.sqrt(f), n).astype(np.float32)


def at_snr(noise: Float32Array, speech: Float32Array, snr_db: float) -> Float32Array:
    """``noise`` scaled to ``snr_db`` under the level of ``speech`` (its samples above -60 dBFS)."""
    rms = float(np.sqrt(np.mean(speech[np.abs(speech) > 1e-3] ** 2)))
    noise = noise / max(1e-9, float(np.sqrt(np.mean(noise**2))))
    return (noise * rms * 10 ** (-snr_db / 20)).astype(np.float32)


def babble(talkers: list[Float32Array], n: int) -> Float32Array:
    """People talking at once: each of ``talkers`` looped to ``n`` samples from its own offset
    (a third of a second between its sentences)."""
    out = np.zeros(n, dtype=np.float32)
    for k, s in enumerate(talkers):
        talk = np.concatenate([s, np.zeros(RATE_HZ // 3, dtype=np.float32)])
        out += np.resize(np.roll(talk, (k + 1) * RATE_HZ // 2), n)
    return out


def _babble(speeches: list[Float32Array], i: int, n: int) -> Float32Array:
    """Three other talkers of the set."""
    return babble([speeches[other % len(speeches)] for other in (i + 7, i + 13, i + 19)], n)


def _make(folder: Path, progress: Callable[[str], None]) -> Items:
    voices = Voices()
    speeches: list[Float32Array] = []
    specs: list[tuple[str, float]] = []
    for i, text in enumerate(SENTENCES):
        voice, speed = VOICES[i % len(VOICES)], SPEEDS[i // len(VOICES) % len(SPEEDS)]
        raw, rate = voices.speak(voice, text, speed)
        speech = resample(trim(np.asarray(raw, dtype=np.float32), rate), in_rate_hz=rate,
                          out_rate_hz=RATE_HZ)
        speeches.append(speech / max(1e-6, float(np.abs(speech).max())))
        specs.append((voice, speed))
        progress(f"  synthesized {i + 1}/{len(SENTENCES)} ({voice}, x{speed})")
    items = []
    lead, tail = round(LEAD_S * RATE_HZ), round(TAIL_S * RATE_HZ)
    for i, (text, speech) in enumerate(zip(SENTENCES, speeches, strict=True)):
        clean = np.zeros(lead + speech.size + tail, dtype=np.float32)
        clean[lead:lead + speech.size] = speech * LEVELS[i // 3 % len(LEVELS)]
        rng = np.random.default_rng(zlib.crc32(text.encode()))
        floor = rng.normal(0.0, 3e-4, clean.size).astype(np.float32)  # a microphone's hiss
        for condition in CONDITIONS:
            out = clean + floor
            if condition == "noise":
                out = out + at_snr(_pink(clean.size, rng), clean, NOISE_SNR_DB)
            elif condition == "babble":
                out = out + at_snr(_babble(speeches, i, clean.size), clean, BABBLE_SNR_DB)
            name = f"h{i:02d}-{condition}"
            write_wav(folder / f"{name}.wav", float32_to_pcm16(np.clip(out, -1, 1)),
                      sample_rate_hz=RATE_HZ)
            items.append({"name": name, "file": f"{name}.wav", "text": text,
                          "voice": specs[i][0], "speed": specs[i][1], "condition": condition,
                          "speech_start_ms": round(LEAD_S * 1000),
                          "speech_end_ms": round((lead + speech.size) / RATE_HZ * 1000)})
    return items
