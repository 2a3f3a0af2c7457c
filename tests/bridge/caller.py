"""Test helpers: the scripted LiveKit caller (``voxbus.dev.livekit_caller``), fixture audio
and the runtime's bus tap."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import TypeVar

import numpy as np

from voxbus.audio import convert_pcm16
from voxbus.contracts.messages import Message
from voxbus.dev.livekit_caller import SILENT_RMS, Caller, Heard
from voxbus.runtime.testing import Tap
from voxbus.services.bridge.session import session_id_for, session_key

SPEECH = Path(__file__).resolve().parents[1] / "fixtures" / "speech"
M = TypeVar("M", bound=Message)
__all__ = ["SILENT_RMS", "Caller", "Heard", "Tap", "load_wav", "resample", "session_of",
           "tone"]


def session_of(caller: Caller) -> str:
    """The opaque session id the bridge gives a joined caller (keyed by the API secret)."""
    return session_id_for(session_key("", caller.secret), caller.room_name, caller.identity,
                          caller.room.local_participant.sid)



def load_wav(name: str) -> tuple[np.ndarray, int]:
    with wave.open(str(SPEECH / name), "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


def resample(x: np.ndarray, rate: int, out_rate: int) -> np.ndarray:
    """PCM16 samples at ``rate`` as PCM16 samples at ``out_rate`` (the one resampler)."""
    pcm = convert_pcm16(x.astype("<i2").tobytes(), rate=rate, channels=1, out_rate=out_rate)
    return np.frombuffer(pcm, dtype="<i2").copy()


def tone(seconds: float, rate: int = 24_000, hz: float = 300.0, amp: int = 8000) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * amp).astype("<i2")
