"""Whisper on a shorter window: an utterance that fits in ``window_s - margin_s`` seconds is
encoded in a ``window_s`` mel window instead of Whisper's fixed 30 s one.

Whisper's encoder always gets 3000 mel frames (30 s) from faster-whisper, padding a 2 s
utterance with 28 s of silence; the encoder is most of tiny.en's decode time. CTranslate2
accepts fewer frames, so this module encodes the utterance padded to the short window itself
(faster-whisper's ``chunk_length`` does not: its segment loop pads every segment back to 3000
frames) and decodes it with faster-whisper's own prompt and temperature fallback. A window
barely longer than the audio makes the model repeat itself (measured: audio + 1 s), hence the
margin. Two kinds of short-window decode are thrown away and the utterance decoded again on the
full window:
- a repetitive one (gzip compression ratio above the threshold, a phrase of four words or more
  said twice, or as many tokens as the audio could hold): the token cap makes it cheap, a loop
  stops after about twice the words the audio could carry instead of at Whisper's 448 tokens;
- for a final, an unsure one (average log probability under ``MIN_LOGPROB``): the model, not
  sure of itself, is then sensitive to the padding and to where the utterance was cut ("The
  meetings are set in the morning" or "The meetings start at 10" for "The meeting starts at
  ten in the morning" on every window from 8 to 20 s, depending on the 150-400 ms of audio
  before the speech). On the six espeak fixtures cut at ten onsets and two ends each, every
  short-window decode more than one word off that was not repetitive scored -0.34 or lower
  (the highest: -0.341, "table"; -0.355, "meeting"), every one within a word -0.32 or higher,
  and the 30 s window got every one of those cuts right. Of the 24 unseen sentences one
  right decode scored under the bar (-0.36) and is decoded twice.

Blocking, like the engine: call it from the engine's thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from voxbus.audio import Float32Array
from voxbus.services.stt.audio import WHISPER_RATE_HZ

#: Mel frames per second (hop of 160 samples at 16 kHz).
FRAMES_PER_S = 100
#: Above this gzip compression ratio a decode is repetitive (faster-whisper's default).
COMPRESSION_RATIO_THRESHOLD = 2.4
#: Tokens a decode of ``s`` seconds may take: ``BASE + PER_S * s``. Fast speech is about 4
#: words (5-6 tokens) a second; a decode that reaches the cap is looping.
TOKENS_BASE, TOKENS_PER_S = 16, 10
#: A final decoded on the short window below this average log probability is decoded again on
#: the full one.
MIN_LOGPROB = -0.33
#: A run of this many words said twice in one utterance is a loop.
REPEAT_WORDS = 4


def repeats_a_phrase(text: str, n: int = REPEAT_WORDS) -> bool:
    words = [w.strip(".,!?;:\"'").lower() for w in text.split()]
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowDecode:
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    capped: bool  # stopped at the token cap
    #: With ``align``: each word's (start, end), seconds from the start of the audio; None: not
    #: aligned.
    words: tuple[tuple[float, float], ...] | None = None

    @property
    def repetitive(self) -> bool:
        return (self.capped or self.compression_ratio > COMPRESSION_RATIO_THRESHOLD
                or repeats_a_phrase(self.text))

    @property
    def unsure(self) -> bool:
        return self.avg_logprob < MIN_LOGPROB


class ShortWindow:
    """Decodes utterances up to ``max_audio_s`` on a ``window_s`` window of ``model`` (a
    faster-whisper ``WhisperModel``)."""

    def __init__(self, model: Any, *, window_s: float, margin_s: float, language: str | None,
                 initial_prompt: str | None) -> None:
        if not 0 < margin_s < window_s <= 30:
            raise ValueError(f"a short window needs 0 < margin ({margin_s} s) < window "
                             f"({window_s} s) <= 30 s")
        from faster_whisper.tokenizer import Tokenizer

        self._model = model
        self.frames = int(window_s * FRAMES_PER_S)
        self.max_audio_s = window_s - margin_s
        self._tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual,
                                    task="transcribe", language=language or "en")
        self._previous = (self._tokenizer.encode(" " + initial_prompt.strip())
                          if initial_prompt else [])

    def fits(self, n_samples: int) -> bool:
        return n_samples <= self.max_audio_s * WHISPER_RATE_HZ

    def decode(self, samples: Float32Array, *, beam_size: int, temperatures: Sequence[float],
               max_new_tokens: int | None, align: bool = False) -> WindowDecode:
        """``align``: also find where each word is (Whisper's cross-attention alignment,
        faster-whisper's word timestamps: one more decoder pass over the tokens)."""
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

        m = self._model
        cap = TOKENS_BASE + int(TOKENS_PER_S * samples.size / WHISPER_RATE_HZ)
        if max_new_tokens is not None:
            cap = min(cap, max_new_tokens)
        features = m.feature_extractor(samples)  # no chunk_length: the extractor is shared
        content = features[:, : max(1, features.shape[-1] - 1)]
        encoded = m.encode(np.ascontiguousarray(pad_or_trim(content, self.frames)))
        tok = self._tokenizer
        options = TranscriptionOptions(
            beam_size=beam_size, best_of=1, patience=1, length_penalty=1, repetition_penalty=1,
            no_repeat_ngram_size=0, log_prob_threshold=-1.0, no_speech_threshold=0.6,
            compression_ratio_threshold=COMPRESSION_RATIO_THRESHOLD,
            condition_on_previous_text=False, prompt_reset_on_temperature=0.5,
            temperatures=list(temperatures), initial_prompt=None, prefix=None,
            suppress_blank=True, suppress_tokens=get_suppressed_tokens(tok, [-1]),
            without_timestamps=True, max_initial_timestamp=1.0, word_timestamps=False,
            prepend_punctuations="", append_punctuations="", multilingual=False,
            max_new_tokens=cap, clip_timestamps="0",
            hallucination_silence_threshold=None, hotwords=None,
        )
        prompt = m.get_prompt(tok, self._previous, without_timestamps=True)
        result, avg_logprob, _temperature, ratio = m.generate_with_fallback(
            encoded, prompt, tok, options)
        tokens = result.sequences_ids[0]
        words = _word_spans(m, tok, tokens, encoded, content.shape[-1]) if align else None
        return WindowDecode(text=tok.decode(tokens).strip(), avg_logprob=float(avg_logprob),
                            no_speech_prob=float(result.no_speech_prob),
                            compression_ratio=float(ratio),
                            capped=len(tokens) >= cap and max_new_tokens != cap,
                            words=words)


def _word_spans(model: Any, tokenizer: Any, tokens: list[int], encoded: Any,
                frames: int) -> tuple[tuple[float, float], ...]:
    """Each spoken word's (start, end), seconds from the start of the audio."""
    text = [t for t in tokens if t < tokenizer.eot]
    if not text:
        return ()
    words = model.find_alignment(tokenizer, [text], encoded, frames)[0]
    return tuple((float(w["start"]), float(w["end"])) for w in words
                 if str(w["word"]).strip(" .,!?;:\"'"))
