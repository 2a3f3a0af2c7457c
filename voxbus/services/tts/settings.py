"""TTS worker settings from ``TTS_*`` environment variables, read once into a frozen object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from voxbus.runtime.settings import Env, SettingsError

Providers = Literal["cpu", "cuda"]
EngineName = Literal["kokoro", "piper"]


@dataclass(frozen=True, kw_only=True)
class TtsSettings:
    """One TTS worker: the voice, the unit splitter (the one place that decides where speech
    units end) and capacity. Each field's ``#:`` comment is its entry in docs/settings.md."""

    #: ``piper`` (Piper's joe voice, the ``piper`` extra, GPL-3.0-or-later; in the room it
    #: answered in a third of Kokoro's time on this CPU) or ``kokoro`` (Kokoro-82M, the better
    #: voice).
    engine: EngineName = "piper"
    #: An explicit Kokoro model file; unset: the verified cached one.
    model_path: str | None = None
    #: The voice; empty: the engine's default (Kokoro's af_heart, Piper's joe). An unknown one
    #: falls back to the default, with a warning.
    voice: str = ""
    #: Speaking rate, 0.5 to 2.0.
    speed: float = 1.0
    #: onnxruntime threads per forward pass; 0: the engine's (Kokoro 2; Piper 1, two were
    #: slower on shared cores).
    intra_op_threads: int = 0
    #: onnxruntime's execution provider: ``cpu`` or ``cuda``.
    providers: Providers = "cpu"
    #: Let onnxruntime's idle threads busy-wait (faster only when the cores are not shared).
    spin: bool = False
    #: Length of the AudioOut frames: 10, 20, 40 or 60 ms.
    frame_ms: int = 20
    #: Forward passes at once in this worker (1 on 2 cores).
    synth_workers: int = 1
    #: Replies synthesized at once; a further one waits up to ``admit_timeout_s`` for a place.
    max_sessions: int = 4
    #: How long a reply waits for a place before it is refused with an error event.
    admit_timeout_s: float = 2.0
    #: Where a first unit without punctuation is cut, in words. 0: the engine's
    #: (TtsStage.first_words): Piper's 3 answered in 0.90 s p50 in the room against 1.19 s with
    #: 5, and Whisper heard the replies as well; Kokoro keeps 5 (with 4 it said words Whisper got
    #: wrong; see docs/decisions/first-unit-words.md).
    first_words: int = 0
    #: Words after ``first_words`` in which a punctuation cut is still preferred to a word cut;
    #: each one delays the first unit of a reply without punctuation by a token or two.
    first_lookahead: int = 0
    #: The longest later unit, in characters (a longer sentence is split at a clause mark).
    max_unit_chars: int = 160
    #: Lower caps for the first later units (comma-separated; ``0``: none), so each unit's
    #: synthesis can finish while the one before plays.
    ramp: tuple[int, ...] = (50, 100)
    #: Audio of short units ("Sure,") kept for reuse (0: no cache).
    cache_entries: int = 64
    #: The longest unit the cache keeps, in characters.
    cache_max_chars: int = 24
    #: A reply whose end never comes is closed after this long without text (its end marker
    #: is sent), so it cannot hold a place for long.
    reply_ttl_s: float = 10.0
    #: With every place taken, a reply without text for this long makes room for a new one.
    evict_idle_s: float = 1.0

    @property
    def threads(self) -> int:
        """onnxruntime intra-op threads for this engine."""
        return self.intra_op_threads or (1 if self.engine == "piper" else 2)

    def __post_init__(self) -> None:
        if not 0.5 <= self.speed <= 2.0:
            raise SettingsError(f"TTS_SPEED must be within 0.5..2.0, got {self.speed}")
        if self.providers not in ("cpu", "cuda"):
            raise SettingsError(f"TTS_PROVIDERS must be cpu or cuda, got {self.providers!r}")
        if self.engine not in ("kokoro", "piper"):
            raise SettingsError(f"TTS_ENGINE must be kokoro or piper, got {self.engine!r}")
        if self.frame_ms not in (10, 20, 40, 60):
            raise SettingsError(f"TTS_FRAME_MS must be 10, 20, 40 or 60, got {self.frame_ms}")
        if self.intra_op_threads < 0:
            raise SettingsError("TTS_INTRA_OP_THREADS must be at least 1 (0: the engine's)")
        for name in ("synth_workers", "max_sessions"):
            if getattr(self, name) < 1:
                raise SettingsError(f"TTS_{name.upper()} must be at least 1")
        if self.first_words == 1 or self.first_words < 0 or self.first_lookahead < 0:
            raise SettingsError("TTS_FIRST_WORDS must be at least 2 (0: the engine's), "
                                "TTS_FIRST_LOOKAHEAD >= 0")
        if self.max_unit_chars < 16 or any(cap < 16 for cap in self.ramp):
            raise SettingsError("TTS_MAX_UNIT_CHARS and TTS_RAMP caps must be at least 16")
        if self.cache_entries < 0 or self.cache_max_chars < 0:
            raise SettingsError("TTS_CACHE_ENTRIES and TTS_CACHE_MAX_CHARS must be >= 0")
        if self.admit_timeout_s < 0 or self.reply_ttl_s <= 0 or self.evict_idle_s < 0:
            raise SettingsError("TTS_ADMIT_TIMEOUT_S and TTS_EVICT_IDLE_S must be >= 0, "
                                "TTS_REPLY_TTL_S > 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TtsSettings:
        env = Env("TTS", environ)
        d = cls()
        providers = env.str("PROVIDERS", d.providers).lower()
        if providers not in ("cpu", "cuda"):
            raise SettingsError(f"TTS_PROVIDERS must be cpu or cuda, got {providers!r}")
        engine = env.str("ENGINE", d.engine).lower()
        if engine not in ("kokoro", "piper"):
            raise SettingsError(f"TTS_ENGINE must be kokoro or piper, got {engine!r}")
        return cls(
            engine="piper" if engine == "piper" else "kokoro",
            model_path=env.str("MODEL_PATH", "") or None,
            voice=env.str("VOICE", d.voice),
            speed=env.float("SPEED", d.speed),
            intra_op_threads=env.int("INTRA_OP_THREADS", d.intra_op_threads),
            providers="cuda" if providers == "cuda" else "cpu",
            spin=env.bool("SPIN", d.spin),
            frame_ms=env.int("FRAME_MS", d.frame_ms),
            synth_workers=env.int("SYNTH_WORKERS", d.synth_workers),
            max_sessions=env.int("MAX_SESSIONS", d.max_sessions),
            admit_timeout_s=env.float("ADMIT_TIMEOUT_S", d.admit_timeout_s),
            first_words=env.int("FIRST_WORDS", d.first_words),
            first_lookahead=env.int("FIRST_LOOKAHEAD", d.first_lookahead),
            max_unit_chars=env.int("MAX_UNIT_CHARS", d.max_unit_chars),
            ramp=_caps(env, "RAMP", d.ramp),
            cache_entries=env.int("CACHE_ENTRIES", d.cache_entries),
            cache_max_chars=env.int("CACHE_MAX_CHARS", d.cache_max_chars),
            reply_ttl_s=env.float("REPLY_TTL_S", d.reply_ttl_s),
            evict_idle_s=env.float("EVICT_IDLE_S", d.evict_idle_s),
        )


def _caps(env: Env, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = env.str(name, ",".join(map(str, default)))
    if raw.strip().lower() in ("", "none", "0"):
        return ()
    try:
        return tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise SettingsError(f"TTS_{name}={raw!r}: comma-separated integers") from None
