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
    """``TTS_ENGINE``: ``piper`` (default: Piper's joe voice, the ``piper`` extra; in the room
    it answered in a third of Kokoro's time on this CPU) or ``kokoro`` (Kokoro-82M, the better
    voice). ``TTS_MODEL_PATH``: an explicit Kokoro model file (default: the verified cached one).
    ``TTS_VOICE``/``TTS_SPEED``: the voice (an unknown one falls back to the engine's default,
    with a warning) and speaking rate. ``TTS_INTRA_OP_THREADS`` (0: Kokoro 2, Piper 1),
    ``TTS_PROVIDERS``/``TTS_SPIN``: onnxruntime threads per forward pass, ``cpu`` or ``cuda``,
    busy-waiting idle threads (faster only when the cores are not shared).
    ``TTS_SYNTH_WORKERS``: forward passes at once in this worker (1 on 2 cores).
    ``TTS_MAX_SESSIONS``: replies synthesized at once; a further session waits up to
    ``TTS_ADMIT_TIMEOUT_S`` for a slot, then gets an error event.
    ``TTS_FIRST_WORDS`` (0: the engine's, Piper 3, Kokoro 5), ``TTS_FIRST_LOOKAHEAD``,
    ``TTS_MAX_UNIT_CHARS``, ``TTS_RAMP`` (comma-separated caps): the unit splitter, the one place
    that decides where speech units end.
    ``TTS_CACHE_ENTRIES``/``TTS_CACHE_MAX_CHARS``: audio of short units ("Sure,") kept for reuse
    (0 turns it off). ``TTS_REPLY_TTL_S``: a reply whose end never came is ended (its end
    marker sent) after this long without a message. ``TTS_EVICT_IDLE_S``: with every slot taken,
    a reply without text for this long gives its slot to a new one.
    """

    engine: EngineName = "piper"
    model_path: str | None = None
    voice: str = ""  # "": the engine's default voice (Kokoro's af_heart, Piper's joe)
    speed: float = 1.0
    intra_op_threads: int = 0  # 0: the engine's (Kokoro 2; Piper 1, two were slower shared)
    providers: Providers = "cpu"
    spin: bool = False
    frame_ms: int = 20
    synth_workers: int = 1
    max_sessions: int = 4
    admit_timeout_s: float = 2.0
    # where a first unit without punctuation is cut. 0: the engine's (TtsStage.first_words):
    # Piper's 3 answered in 0.90 s p50 in the room against 1.19 s with 5, and Whisper heard the
    # replies as well; Kokoro keeps 5 (with 4 it said words Whisper got wrong; see the README)
    first_words: int = 0
    # words after first_words in which a punctuation cut is still preferred to a word cut; each
    # one delays the first unit of a reply without punctuation by a token or two
    first_lookahead: int = 0
    max_unit_chars: int = 160
    ramp: tuple[int, ...] = (50, 100)
    cache_entries: int = 64
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
