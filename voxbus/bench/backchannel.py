"""Backchannel benchmark (issue 29): whether what a caller says to show they follow ("mhm",
"yeah", a cough) leaves the agent talking, and whether a real interruption ("wait, stop") still
cuts it.

    voxbus bench backchannel [--no-opus] [--limit N]

The set: 20 backchannels (words and five non-speech sounds made here: a cough, a throat clear,
a laugh, a breath, a tongue click) and 20 interruptions, the words spoken by six voices in turn
(three Kokoro, Piper's joe, two espeak-ng) at two levels, each with a 0.6 s lead, a 1.5 s tail
and a microphone's hiss. Made on first use (well under a minute) and kept under
``~/.cache/voxbus/bench/backchannel-<version>/``; nothing is committed but this file. Change
anything that shapes the audio and bump ``VERSION``.

Each clip goes through what the STT stage runs, in this process and faster than real time: the
Opus round trip, the stage's segmenter (Silero VAD, turn detector, denoiser and foreground as
the STT_* settings say) in 20 ms chunks, every ``PartialDue`` decoded as a partial (on the
partials' engine) and every ``EndOfTurn`` as a final (on the finals' engine). Every partial is
decoded (the stage skips one while a decode runs). Then the bridge's decision: a start of speech
pauses the agent; the first partial or final whose text is speech (``runtime.backchannel``)
cuts it; otherwise it plays on (after a final of backchannels or no words, or 1 s without
words). No start of speech: it was never paused. Reports each clip and the totals; writes
bench/results/backchannel.json.
"""

from __future__ import annotations

import argparse
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxbus.audio import (
    Float32Array,
    float32_to_pcm16,
    resample,
    write_wav,
)
from voxbus.bench.hearing import opus_roundtrip, smart_turn_judge
from voxbus.bench.report import print_table, write_json
from voxbus.bench.speechset import LEAD_S, RATE_HZ, TAIL_S, Items, Voices, cached, trim
from voxbus.errors import UserError
from voxbus.runtime.backchannel import Heard, heard
from voxbus.services.stt import turns
from voxbus.services.stt.audio import load_wav_16k_mono
from voxbus.services.stt.decoding import build_engine
from voxbus.services.stt.denoise import make_denoiser
from voxbus.services.stt.engine import WhisperEngine
from voxbus.services.stt.settings import SttSettings
from voxbus.services.stt.vad import SileroVad

VERSION = 2  # 2: espeak at 165 words a minute, as the hearing set
KINDS = ("backchannel", "interruption")
#: The bridge plays a paused reply on after this long without a word (BRIDGE_BACKCHANNEL_RESUME_S).
RESUME_MS = 1000

#: Said, or a non-speech sound (``<cough>``) made here.
BACKCHANNELS = [
    "Mhm.", "Mm-hmm.", "Uh-huh.", "Yeah.", "Yep.", "Okay.", "Right.", "Sure.", "I see.",
    "Got it.", "Oh, okay.", "Yes.", "Alright.", "<cough>", "<throat clear>", "<laugh>",
    "<breath>", "<click>", "Hmm.", "Ah.",
]
INTERRUPTIONS = [
    "Wait, stop.", "Hold on a second.", "No, that's not what I asked.",
    "Sorry, can I change the time?", "Actually, make it Friday.", "Stop.", "I need to go.",
    "Can you repeat that?", "Hang on, that's the wrong address.", "No no, the other one.",
    "Excuse me, I have a question.", "Let me stop you there.", "That's too expensive.",
    "Can I speak to a person?", "Wait, what was the price?", "I already did that.",
    "Go back to the first option.", "Not Tuesday, Thursday.", "Cancel that please.",
    "Sorry, I didn't catch that.",
]
VOICES = ["kokoro:af_heart", "piper:joe", "kokoro:am_michael", "espeak:en-us",
          "kokoro:bf_emma", "espeak:en-gb+m3"]
LEVELS = (0.5, 0.25)  # peak of the sound
SOFT = {"<breath>": 0.4, "<click>": 0.8}  # of the level: a breath is soft


@dataclass(frozen=True, slots=True)
class Clip:
    name: str
    kind: str  # backchannel | interruption
    text: str
    voice: str  # synth:<sound> for the made sounds
    path: Path
    sound_start_ms: int
    sound_end_ms: int

    def audio(self) -> Float32Array:
        return load_wav_16k_mono(self.path)


def load(progress: Callable[[str], None] = print) -> list[Clip]:
    """The set, made first if it is not in the cache."""
    root, items = cached("backchannel", VERSION, lambda folder: _make(folder, progress))
    return [Clip(name=it["name"], kind=it["kind"], text=it["text"], voice=it["voice"],
                 path=root / it["file"], sound_start_ms=it["sound_start_ms"],
                 sound_end_ms=it["sound_end_ms"]) for it in items]


# ---- making the set ---------------------------------------------------------------------------


def _band(noise: Float32Array, lo_hz: float, hi_hz: float) -> Float32Array:
    """``noise`` with only ``lo_hz``..``hi_hz`` kept (16 kHz)."""
    spectrum = np.fft.rfft(noise)
    f = np.fft.rfftfreq(noise.size, 1 / RATE_HZ)
    spectrum[(f < lo_hz) | (f > hi_hz)] = 0
    return np.fft.irfft(spectrum, noise.size).astype(np.float32)


def _ms(ms: float) -> int:
    return round(ms * RATE_HZ / 1000)


def _envelope(n: int, attack_ms: float, decay_ms: float) -> Float32Array:
    """A fast rise over ``attack_ms``, then an exponential fall with ``decay_ms`` time constant."""
    t = np.arange(n) / RATE_HZ * 1000
    rise = np.minimum(1.0, t / max(attack_ms, 1e-3))
    return (rise * np.exp(-np.maximum(0.0, t - attack_ms) / decay_ms)).astype(np.float32)


def _sound(name: str, rng: np.random.Generator) -> Float32Array:
    """A non-speech sound a caller makes, from noise and pulses."""
    if name == "<cough>":  # an explosive burst, then a shorter second push
        a = _band(rng.normal(0, 1, _ms(200)).astype(np.float32), 300, 3500)
        a *= _envelope(a.size, 6, 60)
        b = _band(rng.normal(0, 1, _ms(120)).astype(np.float32), 250, 2500)
        b *= 0.5 * _envelope(b.size, 8, 40)
        return np.concatenate([a, np.zeros(_ms(40), np.float32), b])
    if name == "<throat clear>":  # a low rattle, ~300 ms, swelling and fading
        n = _ms(300)
        t = np.arange(n) / RATE_HZ
        rumble = _band(rng.normal(0, 1, n).astype(np.float32), 80, 700)
        rattle = 0.6 + 0.4 * np.sign(np.sin(2 * np.pi * 28 * t))
        voiced = 0.3 * np.sin(2 * np.pi * 110 * t) * rattle
        shape = np.sin(np.pi * np.arange(n) / n) ** 0.5
        return ((rumble / max(1e-9, float(np.abs(rumble).max())) * rattle + voiced)
                * shape).astype(np.float32)
    if name == "<laugh>":  # four breathy "ha" pulses on a falling pitch
        parts: list[Float32Array] = []
        for k in range(4):
            n = _ms(90)
            t = np.arange(n) / RATE_HZ
            f0 = 240 - 15 * k
            pulses = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 12))
            ha = _band(np.asarray(pulses, dtype=np.float32), 200, 3000)
            breath = _band(rng.normal(0, 1, n).astype(np.float32), 600, 4000)
            ha = ha / max(1e-9, float(np.abs(ha).max()))
            breath = breath / max(1e-9, float(np.abs(breath).max()))
            parts += [((ha + 0.5 * breath) * _envelope(n, 10, 40)).astype(np.float32),
                      np.zeros(_ms(70), np.float32)]
        return np.concatenate(parts[:-1])
    if name == "<breath>":  # 400 ms of soft high-passed noise
        n = _ms(400)
        air = _band(rng.normal(0, 1, n).astype(np.float32), 1500, 7000)
        fade: Float32Array = (np.sin(np.pi * np.arange(n) / n) ** 2).astype(np.float32)
        return air * fade
    if name == "<click>":  # a 5 ms tongue click: a ringing impulse
        n = _ms(5)
        t = np.arange(n) / RATE_HZ
        return (np.sin(2 * np.pi * 2500 * t) * np.exp(-t / 0.0012)).astype(np.float32)
    raise ValueError(f"no such sound: {name}")


def _make(folder: Path, progress: Callable[[str], None]) -> Items:
    voices = Voices()
    said = [("backchannel", t) for t in BACKCHANNELS] + [("interruption", t)
                                                          for t in INTERRUPTIONS]
    items = []
    lead, tail = round(LEAD_S * RATE_HZ), round(TAIL_S * RATE_HZ)
    spoken = 0
    for i, (kind, text) in enumerate(said):
        rng = np.random.default_rng(zlib.crc32(f"{kind}:{text}".encode()))
        level = LEVELS[i % len(LEVELS)]
        if text.startswith("<"):
            sound, voice = _sound(text, rng), f"synth:{text.strip('<>')}"
            level *= SOFT.get(text, 1.0)
        else:
            # rotate voices; a voice that makes nothing of the text gives it to the next
            for k in range(len(VOICES)):
                voice = VOICES[(spoken + k) % len(VOICES)]
                raw, rate = voices.speak(voice, text, 1.0)
                if raw.size >= rate // 20 and float(np.abs(raw).max()) > 1e-3:
                    break
            else:
                raise UserError(f"no voice could say {text!r}")
            spoken += 1
            sound = resample(trim(raw, rate), in_rate_hz=rate, out_rate_hz=RATE_HZ)
        sound = sound / max(1e-6, float(np.abs(sound).max()))
        clip = np.zeros(lead + sound.size + tail, dtype=np.float32)
        clip[lead:lead + sound.size] = sound * level
        clip += rng.normal(0.0, 3e-4, clip.size).astype(np.float32)  # a microphone's hiss
        name = f"{kind[0]}{i % 20:02d}"
        write_wav(folder / f"{name}.wav", float32_to_pcm16(np.clip(clip, -1, 1)),
                  sample_rate_hz=RATE_HZ)
        items.append({"name": name, "file": f"{name}.wav", "kind": kind, "text": text,
                      "voice": voice, "level": level, "sound_start_ms": round(LEAD_S * 1000),
                      "sound_end_ms": round((lead + sound.size) / RATE_HZ * 1000)})
        progress(f"  made {i + 1}/{len(said)} ({voice}: {text})")
    return items


# ---- hearing a clip as the stage and the bridge do ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Words:
    """A decode's text and when it reached the bridge (ms of audio after the sound began)."""

    source: str  # partial | final
    text: str
    at_ms: int


@dataclass
class Outcome:
    starts: list[int]  # each SpeechStarted, ms after the sound began
    words: list[Words]

    @property
    def paused(self) -> bool:
        return bool(self.starts)

    @property
    def cut_by(self) -> Words | None:
        """The first words that are speech: the bridge cuts the agent there."""
        if not self.paused:
            return None
        return next((w for w in self.words if heard(w.text) is Heard.SPEECH), None)

    @property
    def decision(self) -> str:
        if not self.paused:
            return "not paused"
        return "cut" if self.cut_by is not None else "resumed"

    @property
    def resumed_ms(self) -> int | None:
        """When a paused agent that is not cut plays on: its first final, or 1 s without
        words, whichever comes first (ms after the sound began)."""
        if not self.paused or self.cut_by is not None:
            return None
        finals = [w.at_ms for w in self.words if w.source == "final"]
        return min([self.starts[0] + RESUME_MS, *finals])


def hear(audio: Float32Array, sound_start_ms: int, settings: SttSettings,
         final: WhisperEngine, partial: WhisperEngine | None) -> Outcome:
    """The clip in 20 ms chunks through the stage's segmenter; partials and finals decoded."""
    seg = turns.Segmenter(vad=SileroVad(), config=settings.turn_config(),
                          turn_model=smart_turn_judge(settings),
                          denoiser=make_denoiser(settings.denoise),
                          denoised_decode=settings.denoise_decode,
                          foreground_db=settings.foreground_db)
    per_ms = RATE_HZ / 1000
    out = Outcome(starts=[], words=[])

    def at(sample: int) -> int:
        return round(sample / per_ms) - sound_start_ms

    def take(segments: list[turns.Segment]) -> None:
        for s in segments:
            match s.event:
                case turns.SpeechStarted() as ev:
                    out.starts.append(at(ev.at_sample))
                case turns.PartialDue() as ev if partial is not None and s.audio is not None:
                    r = partial.transcribe(s.audio, partial=True)
                    out.words.append(Words("partial", r.speech(settings.no_speech_threshold),
                                           at(ev.at_sample)))
                case turns.EndOfTurn() as ev if s.audio is not None:
                    r = final.transcribe(s.audio)
                    out.words.append(Words("final", r.speech(settings.no_speech_threshold),
                                           at(ev.at_sample)))
                case _:
                    pass

    step = RATE_HZ // 50
    for i in range(0, audio.size, step):
        take(seg.push(audio[i:i + step]))
    take(seg.finish())
    return out


def _row(clip: Clip, o: Outcome) -> dict[str, Any]:
    cut = o.cut_by
    ok = (cut is None) if clip.kind == "backchannel" else (cut is not None)
    partials = [w.text for w in o.words if w.source == "partial" and w.text]
    finals = [w.text for w in o.words if w.source == "final"]
    return {
        "kind": clip.kind, "said": clip.text, "voice": clip.voice,
        "heard": " | ".join(t or "-" for t in finals) if finals else "(no final)",
        "partials": " / ".join(partials) or "-",
        "paused": f"{o.starts[0]}ms" if o.starts else "no",
        "decision": o.decision,
        "cut_at": f"{cut.at_ms}ms {cut.source}" if cut is not None else "-",
        "ok": "yes" if ok else "NO",
    }


def run(clips: list[Clip], settings: SttSettings, *, opus: bool) -> dict[str, Any]:
    final = build_engine(settings)
    partial: WhisperEngine | None = None
    if settings.partials:  # the stage's own copy, or (partial_nice 0) the final's engine
        partial = build_engine(settings, partial=True) if settings.partial_nice > 0 else final
    rows: list[dict[str, Any]] = []
    outcomes: list[tuple[Clip, Outcome]] = []
    for c in clips:
        audio = c.audio()
        o = hear(opus_roundtrip(audio) if opus else audio, c.sound_start_ms, settings, final,
                 partial)
        outcomes.append((c, o))
        rows.append(_row(c, o))
        r = rows[-1]
        print(f"  {c.name} {c.text!r}: {r['decision']} ({r['heard']})", flush=True)
    back = [o for c, o in outcomes if c.kind == "backchannel"]
    inter = [o for c, o in outcomes if c.kind == "interruption"]
    cuts = [cut.at_ms for o in inter if (cut := o.cut_by) is not None]
    resumes = [ms for o in back if (ms := o.resumed_ms) is not None]
    totals = {
        "backchannels_not_interrupting": sum(o.cut_by is None for o in back),
        "backchannels": len(back),
        "backchannels_paused": sum(o.paused for o in back),
        "interruptions_cutting": len(cuts),
        "interruptions": len(inter),
        "interruptions_paused": sum(o.paused for o in inter),
        "cut_by_partial": sum(1 for o in inter if (w := o.cut_by) and w.source == "partial"),
        "cut_ms_median": int(np.median(cuts)) if cuts else None,
        "cut_ms_max": max(cuts) if cuts else None,
        "cut_ms": cuts,
        "backchannel_resume_ms_median": int(np.median(resumes)) if resumes else None,
        "backchannel_resume_ms_max": max(resumes) if resumes else None,
    }
    return {"rows": rows, "totals": totals,
            "clips": [{"name": c.name, "kind": c.kind, "said": c.text, "voice": c.voice,
                       "starts_ms": o.starts,
                       "words": [{"source": w.source, "text": w.text, "at_ms": w.at_ms,
                                  "heard": heard(w.text).value} for w in o.words],
                       "decision": o.decision} for c, o in outcomes]}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxbus bench backchannel",
                                description=__doc__.split("\n")[0])
    p.add_argument("--no-opus", action="store_true", help="skip the Opus round trip")
    p.add_argument("--limit", type=int, default=0, help="the first N of each kind only")
    args = p.parse_args(argv)
    clips = load()
    if args.limit:
        clips = [c for k in KINDS for c in [c for c in clips if c.kind == k][:args.limit]]
    settings = SttSettings.from_env(os.environ)
    print(f"backchannel: {len(clips)} clips, opus {'off' if args.no_opus else 'on'}, "
          f"model {settings.model}", flush=True)
    result = run(clips, settings, opus=not args.no_opus)
    print_table("per clip (times: ms of audio after the sound began)", result["rows"])
    t = result["totals"]
    print(f"\nbackchannels not interrupting: {t['backchannels_not_interrupting']}/"
          f"{t['backchannels']} (paused {t['backchannels_paused']}; played on after "
          f"median {t['backchannel_resume_ms_median']} ms, max {t['backchannel_resume_ms_max']})")
    print(f"interruptions cutting: {t['interruptions_cutting']}/{t['interruptions']} "
          f"(paused {t['interruptions_paused']}; {t['cut_by_partial']} cut by a partial; cut "
          f"median {t['cut_ms_median']} ms, max {t['cut_ms_max']} ms after the sound began)")
    write_json("backchannel", {"opus": not args.no_opus, "set_version": VERSION,
                               "model": settings.model, **result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
