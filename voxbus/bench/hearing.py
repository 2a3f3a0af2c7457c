"""Hearing benchmark: how many of the caller's words the STT stage's finals keep, and when the
turn ends, on the speech set of ``voxbus.bench.speechset`` (30 requests, six voices, three
speeds; clean, pink noise and babble copies), after the room's Opus codec (or a phone call's
G.711 then Opus: ``--channel phone``).

    voxbus bench hearing [--variant "STT_BEAM_SIZE=5 STT_WINDOW_S=0"]... [--conditions ...]
                         [--channel opus|phone|none]... [--reference] [--limit N]

Each clip goes through what the stage runs on a session's audio, in this process and faster
than real time, after the clip's clean copy (the caller said something before, in the quiet):
Opus at 32 kbit/s (48 kHz, 20 ms frames, as WebRTC sends it), the resampler to 16 kHz,
Silero VAD and the turn detector with the STT_* settings, then each turn's final decoded on
the final's engine. A variant is a set of STT_* settings over the environment's; the first
row is the environment's own. ``--reference`` adds what faster-whisper's own ``transcribe`` makes
of the whole clip (beam 5, 30 s window, temperature fallback: what Pipecat's Whisper service
runs on a VAD segment), an estimate of what the model can hear. Reports per variant and
condition: word error rate (errors / reference words), turns per clip, phantom turns (ended
before the caller spoke), turn end after the caller's last word (with the partials' decode
time when the turn ends on their words, ``STT_WORDS_PAUSE_MS``), turns ended on words, and
decode time, turns dropped as talk behind the caller (``STT_FOREGROUND_DB``); for babble, in
how many clips the talk alone (the babble copy less the clean one), played after the clip,
came out as words; writes bench/results/hearing.json.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxbus.audio import Float32Array, resample
from voxbus.bench import speechset
from voxbus.bench.report import percentile, print_table, write_json
from voxbus.errors import UserError
from voxbus.services.stt import turns
from voxbus.services.stt.audio import WHISPER_RATE_HZ
from voxbus.services.stt.decoding import build_engine
from voxbus.services.stt.denoise import make_denoiser
from voxbus.services.stt.engine import WhisperEngine
from voxbus.services.stt.normalize import normalize_text, word_errors
from voxbus.services.stt.settings import SttSettings
from voxbus.services.stt.vad import SileroVad

OPUS_RATE_HZ = 48_000
OPUS_BITRATE = 32_000
#: The encoder's lookahead at 48 kHz, which the decoder hands back first (Opus's pre-skip).
OPUS_PRE_SKIP = 312


def opus_roundtrip(audio: Float32Array) -> Float32Array:
    """16 kHz audio through an Opus encoder and decoder at 48 kHz, back at 16 kHz."""
    import av

    up = resample(audio, in_rate_hz=WHISPER_RATE_HZ, out_rate_hz=OPUS_RATE_HZ)
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate = OPUS_RATE_HZ
    enc.layout = "mono"
    enc.format = "s16"
    enc.bit_rate = OPUS_BITRATE
    dec = av.CodecContext.create("libopus", "r")
    dec.sample_rate = OPUS_RATE_HZ
    dec.layout = "mono"
    pcm = (np.clip(up, -1, 1) * 32767).astype(np.int16)
    step = OPUS_RATE_HZ // 50
    out: list[np.ndarray[Any, Any]] = []

    def through(frame: av.AudioFrame | None) -> None:  # None: flush the encoder
        for packet in enc.encode(frame):
            out.extend(decoded.to_ndarray().reshape(-1) for decoded in dec.decode(packet))

    for i in range(0, pcm.size - step + 1, step):
        frame = av.AudioFrame.from_ndarray(pcm[None, i:i + step], format="s16", layout="mono")
        frame.sample_rate = OPUS_RATE_HZ
        frame.pts = i
        through(frame)
    through(None)
    joined = np.concatenate(out).astype(np.float32) / 32768.0  # the decoder gives s16
    return resample(joined[OPUS_PRE_SKIP:], in_rate_hz=OPUS_RATE_HZ, out_rate_hz=WHISPER_RATE_HZ)


PHONE_RATE_HZ = 8_000
_MU = 255.0


def g711_roundtrip(audio: Float32Array) -> Float32Array:
    """16 kHz audio as a phone sends it: band-limited to 8 kHz sampling and companded to 8 bits
    with mu-law (G.711's PCMU, mu = 255), decoded and back at 16 kHz."""
    narrow = np.clip(resample(audio, in_rate_hz=WHISPER_RATE_HZ, out_rate_hz=PHONE_RATE_HZ),
                     -1.0, 1.0)
    companded = np.sign(narrow) * np.log1p(_MU * np.abs(narrow)) / np.log1p(_MU)
    code = np.round(companded * 127.0)  # 8 bits: a sign and 7 of magnitude
    back = np.sign(code) * np.expm1(np.abs(code / 127.0) * np.log1p(_MU)) / _MU
    return resample(back.astype(np.float32), in_rate_hz=PHONE_RATE_HZ,
                    out_rate_hz=WHISPER_RATE_HZ)


def phone_roundtrip(audio: Float32Array) -> Float32Array:
    """A phone call's path to the STT: G.711 from the phone to livekit-sip, which sends it on
    into the room as Opus (``opus_roundtrip``)."""
    return opus_roundtrip(g711_roundtrip(audio))


#: What carries the caller's voice to the STT (``--channel``).
CHANNELS: dict[str, Callable[[Float32Array], Float32Array]] = {
    "opus": opus_roundtrip, "phone": phone_roundtrip, "none": lambda a: a}


@dataclass
class Heard:
    text: str = ""
    turns: int = 0
    phantom: int = 0  # turns that ended before the caller spoke
    turn_end_ms: float | None = None  # the turn that holds the last word: its end after it
    decode_s: list[float] = field(default_factory=list)
    fallbacks: int = 0  # finals decoded a second time on the 30 s window
    on_words: int = 0  # turns ended by a pause in the partials' words
    talk_behind: int = 0  # turns dropped as talk behind the caller (STT_FOREGROUND_DB)
    after: bool = False  # words heard in a turn that started after the caller's words


#: A partial's decode: (its words' (start, end) seconds into it, or None; its decode time).
PartialWords = Callable[[Float32Array], tuple[tuple[tuple[float, float], ...] | None, float]]


def hear(audio: Float32Array, start_ms: int, end_ms: int, settings: SttSettings,
         decode: Callable[[Float32Array], tuple[str, float, bool]],
         judge: Callable[[Float32Array], bool] | None,
         partial: PartialWords | None = None, before: Float32Array | None = None) -> Heard:
    """The clip in 20 ms chunks through the stage's segmenter; each turn's final decoded. With
    ``partial``, the partials are decoded too, and where their words end reaches the segmenter
    as in the stage: one at a time, their decode time of audio after the partial was due (a
    partial due while one decodes is skipped). ``before``: audio the segmenter hears first
    (what the caller said earlier in the call: it learns their voice), not counted."""
    seg = turns.Segmenter(vad=SileroVad(), config=settings.turn_config(), turn_model=judge,
                          denoiser=make_denoiser(settings.denoise),
                          denoised_decode=settings.denoise_decode,
                          foreground_db=settings.foreground_db)
    heard = Heard()
    texts: list[str] = []
    step = WHISPER_RATE_HZ // 50
    if before is not None:
        whole = np.concatenate([before, np.zeros(-before.size % step, dtype=np.float32)])
        for i in range(0, whole.size, step):
            seg.push(whole[i:i + step])
        start_ms += whole.size * 1000 // WHISPER_RATE_HZ
        end_ms += whole.size * 1000 // WHISPER_RATE_HZ
    segments: list[turns.Segment] = []
    # a partial under way: (due at sample, its event, its words)
    pending: tuple[int, turns.PartialDue, tuple[tuple[float, float], ...]] | None = None
    for i in range(0, audio.size, step):
        if pending is not None and seg.position >= pending[0]:
            _, due, words = pending
            seg.words_heard(audio_start=due.audio_start_sample, decoded_to=due.at_sample,
                            words=words)
            pending = None
        for s in seg.push(audio[i:i + step]):
            segments.append(s)
            if (partial is not None and pending is None and s.audio is not None
                    and isinstance(s.event, turns.PartialDue)):
                heard_words, took = partial(s.audio)
                if heard_words is not None:
                    pending = (seg.position + round(took * WHISPER_RATE_HZ), s.event,
                               heard_words)
    segments += seg.finish()
    heard.on_words = seg.detector.ended_on_words
    per_ms = WHISPER_RATE_HZ / 1000
    for s in segments:
        if not isinstance(s.event, turns.EndOfTurn) or s.audio is None:
            continue
        heard.turns += 1
        if s.event.speech_end_sample / per_ms < start_ms:
            heard.phantom += 1
        if s.event.speech_start_sample / per_ms <= end_ms and heard.turn_end_ms is None and (
                s.event.speech_end_sample / per_ms >= end_ms - 300):
            heard.turn_end_ms = s.event.at_sample / per_ms - end_ms
        if s.talk_behind:
            heard.talk_behind += 1
            continue
        text, took, again = decode(s.audio)
        heard.decode_s.append(took)
        heard.fallbacks += again
        if text:
            texts.append(text)
            if s.event.speech_start_sample / per_ms > end_ms + 300:
                heard.after = True
    heard.text = " ".join(texts)
    return heard


def _stage_decoder(engine: WhisperEngine, settings: SttSettings
                   ) -> Callable[[Float32Array], tuple[str, float, bool]]:
    def decode(audio: Float32Array) -> tuple[str, float, bool]:
        before = engine.window_fallbacks
        r = engine.transcribe(audio)
        return (r.speech(settings.no_speech_threshold), r.decode_s,
                engine.window_fallbacks > before)
    return decode


def _partial_words(engine: WhisperEngine) -> PartialWords:
    def words(audio: Float32Array) -> tuple[tuple[tuple[float, float], ...] | None, float]:
        r = engine.transcribe(audio, partial=True)
        return r.words, r.decode_s
    return words


def smart_turn_judge(settings: SttSettings) -> Callable[[Float32Array], bool] | None:
    """Smart Turn's verdict, when the settings ask for it."""
    if settings.turn_model != "smart-turn":
        return None
    from voxbus.services.stt.smart_turn import SmartTurn

    model, bar = SmartTurn(), settings.turn_model_threshold
    return lambda audio: model.complete_probability(audio) >= bar


def _reference(engine: WhisperEngine, audio: Float32Array) -> tuple[str, float]:
    started = time.perf_counter()
    segments, _ = engine._model.transcribe(audio, language="en", beam_size=5,  # noqa: SLF001
                                           vad_filter=False)
    text = " ".join(s.text.strip() for s in segments if s.no_speech_prob < 0.4)
    return text, time.perf_counter() - started


def _variants(specs: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
    out: list[tuple[str, dict[str, str]]] = [("defaults", {})]
    for spec in specs:
        env: dict[str, str] = {}
        for item in shlex.split(spec):
            key, sep, value = item.partition("=")
            if not sep or not key.startswith("STT_"):
                raise UserError(f"--variant takes STT_NAME=VALUE settings, got {item!r}")
            env[key] = value
        out.append((spec, env))
    return out


def _row(name: str, condition: str, results: list[tuple[speechset.Clip, Heard]],
         alone: Mapping[str, Heard] | None = None) -> dict[str, Any]:
    words = sum(len(normalize_text(c.text).split()) for c, _ in results)
    errors = sum(word_errors(c.text, h.text) for c, h in results)
    ends = [h.turn_end_ms for _, h in results if h.turn_end_ms is not None]
    decodes = [d * 1000 for _, h in results for d in h.decode_s]
    return {
        "variant": name, "condition": condition, "clips": len(results),
        "wer": round(errors / max(1, words), 4),
        "again_30s": sum(h.fallbacks for _, h in results),
        "split": sum(h.turns - h.phantom > 1 for _, h in results),
        "phantom": sum(h.phantom for _, h in results),
        "missed": sum(h.turn_end_ms is None for _, h in results),
        "on_words": sum(h.on_words for _, h in results),
        # talk alone (babble only): clips whose talk came out as words
        "talk_behind": sum(h.talk_behind for _, h in results),
        "alone_words": (sum(alone[c.name].after for c, _ in results if c.name in alone)
                        if alone and any(c.name in alone for c, _ in results) else None),
        "end_p50_ms": round(percentile(ends, 50)) if ends else None,
        "end_p95_ms": round(percentile(ends, 95)) if ends else None,
        "decode_p50_ms": round(statistics.median(decodes)) if decodes else None,
        "decode_p95_ms": round(percentile(decodes, 95)) if decodes else None,
    }


def run(variants: list[tuple[str, dict[str, str]]], clips: list[speechset.Clip], *,
        channel: str, reference: bool, environ: Mapping[str, str]) -> dict[str, Any]:
    codec = CHANNELS[channel]
    audio = {c.name: codec(c.audio()) for c in clips}
    alone_audio = {c.name: codec(c.audio() - speechset.clean_copy(c).audio())
                   for c in clips if c.condition == "babble"}
    earlier = {c.name: codec(speechset.clean_copy(c).audio()) for c in clips}
    conditions = sorted({c.condition for c in clips}, key=speechset.CONDITIONS.index)
    rows: list[dict[str, Any]] = []
    misheard: dict[str, list[dict[str, str]]] = {}
    for name, env in variants:
        settings = SttSettings.from_env({**environ, **env})
        engine = build_engine(settings)
        judge = smart_turn_judge(settings)
        decode = _stage_decoder(engine, settings)
        partial = None
        if settings.turn_config().words_pause_ms > 0:
            partial = _partial_words(build_engine(settings, partial=True))
        # each clip is heard after the caller said something in the quiet (its clean copy), as
        # in a call, where their voice is known from their first turn
        results = [(c, hear(audio[c.name], c.speech_start_ms, c.speech_end_ms, settings, decode,
                            judge, partial, before=earlier[c.name])) for c in clips]
        # the talk behind the caller alone (the babble copy less the clean one) after the clip,
        # as if the caller had stopped talking: words heard in it
        alone = {c.name: hear(np.concatenate([audio[c.name], alone_audio[c.name]]), 0,
                              audio[c.name].size * 1000 // WHISPER_RATE_HZ, settings, decode,
                              judge, partial, before=earlier[c.name])
                 for c in clips if c.name in alone_audio}
        for condition in conditions:
            rows.append({"channel": channel, **_row(
                name, condition, [r for r in results if r[0].condition == condition], alone)})
        misheard[name] = [{"clip": c.name, "said": c.text, "heard": h.text} for c, h in results
                          if word_errors(c.text, h.text)]
        print(f"  {name}: " + ", ".join(f"{r['condition']} {r['wer']:.3f}" for r in rows
                                         if r["variant"] == name), flush=True)
        if reference and name == "defaults":
            ref = [(c, Heard(text=_reference(engine, audio[c.name])[0])) for c in clips]
            for condition in conditions:
                rows.append({"channel": channel, **_row(
                    "reference: transcribe(beam 5) on the clip", condition,
                    [r for r in ref if r[0].condition == condition])})
    return {"rows": rows, "misheard": misheard}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="voxbus bench hearing", description=__doc__.split("\n")[0])
    p.add_argument("--variant", action="append", default=[],
                   help='STT settings to compare, e.g. "STT_BEAM_SIZE=5 STT_WINDOW_S=0"')
    p.add_argument("--conditions", default=",".join(speechset.CONDITIONS))
    p.add_argument("--no-opus", action="store_true",
                   help="skip the Opus round trip (the same as --channel none)")
    p.add_argument("--channel", action="append", choices=sorted(CHANNELS),
                   help="what carries the voice: opus (a WebRTC room, the default), phone "
                        "(G.711 from a phone, then Opus from livekit-sip), none; repeat to "
                        "compare in one run")
    p.add_argument("--reference", action="store_true",
                   help="add faster-whisper's own transcribe of each whole clip")
    p.add_argument("--limit", type=int, default=0, help="the first N sentences only")
    args = p.parse_args(argv)
    wanted = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = set(wanted) - set(speechset.CONDITIONS)
    if unknown:
        raise UserError(f"--conditions: unknown {sorted(unknown)}; known: "
                        f"{', '.join(speechset.CONDITIONS)}")
    clips = [c for c in speechset.load() if c.condition in wanted]
    if args.limit:
        keep = set(speechset.SENTENCES[:args.limit])
        clips = [c for c in clips if c.text in keep]
    channels = args.channel or (["none"] if args.no_opus else ["opus"])
    print(f"hearing: {len(clips)} clips, through {', '.join(channels)}", flush=True)
    result: dict[str, Any] = {"rows": [], "misheard": {}}
    for channel in channels:
        one = run(_variants(args.variant), clips, channel=channel, reference=args.reference,
                  environ=os.environ)
        result["rows"] += one["rows"]
        result["misheard"].update({f"{channel}: {k}": v for k, v in one["misheard"].items()})
    print_table("word error rate and turn ends, per channel, variant and condition",
                result["rows"])
    path = write_json("hearing", {"channels": channels, "clips": len(clips),
                                  "set_version": speechset.VERSION, **result})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
