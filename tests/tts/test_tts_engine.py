"""The real Kokoro engine (marked ``model``) and the engine helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from voxbus.services.tts.engine import (
    DEFAULT_VOICE,
    SAMPLE_RATE_HZ,
    KokoroEngine,
    Synthesizer,
    UnknownVoice,
    check_voice,
    lang_for_voice,
    onnx_providers,
    voice_or_default,
)

SENTENCE = "Hello! This is a short test of the speech engine."


def rms(audio: NDArray[np.float32]) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


@pytest.mark.fast
def test_lang_for_voice() -> None:
    assert lang_for_voice("bf_emma") == "en-gb"
    assert lang_for_voice("bm_george") == "en-gb"
    assert lang_for_voice("af_heart") == "en-us"
    assert lang_for_voice("am_michael") == "en-us"


@pytest.mark.fast
def test_onnx_providers() -> None:
    assert onnx_providers("cpu") == ("CPUExecutionProvider",)
    assert onnx_providers("cuda") == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert onnx_providers(["CUDA", "CPUExecutionProvider"]) == (
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    with pytest.raises(ValueError):
        onnx_providers([])


def test_bad_options_fail_before_loading() -> None:
    with pytest.raises(ValueError, match="speed"):
        KokoroEngine(speed=3.0)
    with pytest.raises(ValueError, match="thread"):
        KokoroEngine(intra_op_threads=0)
    with pytest.raises(ValueError, match="not available"):
        KokoroEngine(providers="NoSuchExecutionProvider")


@pytest.mark.model
def test_short_sentence(kokoro: KokoroEngine) -> None:
    assert isinstance(kokoro, Synthesizer)
    assert kokoro.sample_rate_hz == SAMPLE_RATE_HZ == 24_000
    assert kokoro.default_voice == DEFAULT_VOICE == "af_heart"
    assert kokoro.providers == ("CPUExecutionProvider",)
    audio = kokoro.synthesize(SENTENCE)
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert 2.0 <= audio.size / kokoro.sample_rate_hz <= 4.0
    assert np.isfinite(audio).all()
    assert rms(audio) > 0.02
    assert float(np.abs(audio).max()) < 1.5


@pytest.mark.model
@pytest.mark.parametrize("voice", ["af_heart", "am_michael", "bf_emma"])
def test_each_voice_speaks(kokoro: KokoroEngine, voice: str) -> None:
    assert voice in kokoro.voices
    audio = kokoro.synthesize("Good morning, how are you?", voice)
    assert 1.0 <= audio.size / SAMPLE_RATE_HZ <= 3.5
    assert rms(audio) > 0.02


@pytest.mark.model
def test_british_voice_is_phonemized_as_en_gb(kokoro: KokoroEngine) -> None:
    # Non-rhotic British English drops the r and the flap of American "party water".
    british = kokoro.phonemize("party water", "bf_emma")
    american = kokoro.phonemize("party water", "af_heart")
    assert "ɹ" not in british and "ɾ" not in british
    assert "ɹ" in american


@pytest.mark.model
def test_unknown_voice(kokoro: KokoroEngine) -> None:
    with pytest.raises(UnknownVoice, match="unknown voice 'zz_nobody'.*af_heart") as info:
        kokoro.synthesize("Hello.", "zz_nobody")
    assert info.value.voice == "zz_nobody"
    assert info.value.available == kokoro.voices
    assert voice_or_default(kokoro, "zz_nobody") == "af_heart"
    assert voice_or_default(kokoro, None) == "af_heart"
    assert voice_or_default(kokoro, "bf_emma") == "bf_emma"
    assert check_voice(kokoro, None) == "af_heart"


@pytest.mark.model
@pytest.mark.parametrize("text", ["", "   ", "...", "?!", "—", "😀🎉", "👍🏽 ❤️"])
def test_unpronounceable_text_gives_empty_audio(kokoro: KokoroEngine, text: str) -> None:
    audio = kokoro.synthesize(text)
    assert audio.dtype == np.float32
    assert audio.shape == (0,)


@pytest.mark.model
def test_emoji_and_markdown_are_not_read_aloud(kokoro: KokoroEngine) -> None:
    assert kokoro.phonemize("**Sure** 😀") == kokoro.phonemize("Sure")


@pytest.mark.model
def test_text_longer_than_the_phoneme_limit_is_chunked(kokoro: KokoroEngine) -> None:
    text = " ".join(
        [
            "The library opens at nine in the morning and closes at six in the evening.",
            "On weekends it opens later, at ten, and closes earlier, at four.",
            "Children's story time is every Tuesday and Thursday afternoon.",
            "You can borrow up to twelve books, four films and two magazines at once.",
            "Late returns cost twenty cents a day, and the maximum fine is five dollars.",
            "Printing costs ten cents a page, and scanning is free for all members.",
            "The reading room on the second floor is quiet, and laptops are welcome there.",
            "Ask at the front desk if you need help finding a book or renewing your card.",
        ]
    )
    assert len(kokoro.phonemize(text)) > 510
    audio = kokoro.synthesize(text)
    assert audio.size / SAMPLE_RATE_HZ > 15.0
    assert rms(audio) > 0.02


def test_default_voice_must_be_loaded(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not loaded: the voice check comes first")
    with pytest.raises(UnknownVoice, match="bf_emma"):
        KokoroEngine(model_path=model, voices=["bf_emma"], default_voice="af_heart")
