"""STT stage settings: ``STT_*`` environment variables read once into a frozen object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from voxbus.runtime.settings import Env, SettingsError
from voxbus.services.stt.denoise import NAMES as DENOISERS
from voxbus.services.stt.denoise import DenoiserName
from voxbus.services.stt.models import DEFAULT_MODEL
from voxbus.services.stt.turns import TurnConfig

Device = Literal["cpu", "cuda"]
TurnModel = Literal["silence", "smart-turn"]


@dataclass(frozen=True, kw_only=True)
class SttSettings:
    """Model, turn detection and capacity of one STT worker.

    One decode runs at a time per worker (the engine serves one call at a time and uses
    ``cpu_threads`` cores); scale out with more workers.
    """

    #: The Whisper model: ``tiny.en``, ``base`` or a CTranslate2 model directory.
    model: str = DEFAULT_MODEL
    #: ``cpu`` or ``cuda``.
    device: Device = "cpu"
    #: The finals' CTranslate2 compute type; unset: the engine's, float32 on CPU (int8 is
    #: faster but its results vary with the CPU's int8 kernels; see WhisperEngine), float16 on
    #: CUDA.
    compute_type: str | None = None
    #: The partials' compute type; unset: int8 on CPU (partials are replaced by the final, so
    #: what varies by CPU never reaches one), else as ``compute_type``.
    partial_compute_type: str | None = None
    #: CTranslate2 threads of one decode (one decode runs at a time per worker).
    cpu_threads: int = 2
    #: The language Whisper transcribes.
    language: str = "en"
    #: Beam width of the finals' search (1: greedy). 5 loses fewer words under noise and
    #: babble in the hearing bench (0.118 -> 0.104, 0.142 -> 0.100) but not on the varied room
    #: sentences (0.077 -> 0.082), and its ~100 ms more decode in a loaded room ends the guesses
    #: inside the silence window (docs/stages.md, "Hearing in noise").
    beam_size: int = 1
    #: Beam width of the finals of narrowband turns (a phone call: nothing above 4 kHz,
    #: ``band``), which lose three times the words greedily (0.15 against 0.04) and a third
    #: fewer with a beam of 5 (0.10). 0: as ``STT_BEAM_SIZE``.
    narrowband_beam_size: int = 5
    #: An utterance up to ``window_s - window_margin_s`` long is encoded in a mel window this
    #: long instead of Whisper's 30 s (most of the decode time; see docs/stages.md, "A shorter
    #: Whisper window"); 12 halves the final's decode. 0: always 30 s.
    window_s: float = 12.0
    #: Room left in the short window after the utterance.
    window_margin_s: float = 2.0
    #: Noise suppression of the caller's audio before the VAD: ``off``, ``dtln``, ``deepfilter``
    #: or ``rnnoise`` (see services.stt.denoise).
    denoise: DenoiserName = "off"
    #: Whisper decodes the suppressed audio too (else the audio as received).
    denoise_decode: bool = True
    #: A turn whose voice is this many dB under the caller's is people talking behind them:
    #: its final is empty (services.stt.foreground); 0: every voice counts.
    foreground_db: float = 0.0
    # turn detection (see services.stt.turns)
    #: Silence that ends a turn (with ``turn_model`` ``silence``).
    end_silence_ms: int = 300
    #: Speech needed before a turn starts (clicks never get there).
    min_speech_ms: int = 200
    #: Audio kept before the speech's onset and decoded with it.
    pre_roll_ms: int = 200
    #: Voice-activity probability at which speech starts.
    start_threshold: float = 0.5
    #: Voice-activity probability under which silence begins.
    stop_threshold: float = 0.35
    #: The longest turn: at this length the final is forced and a new turn starts.
    max_utterance_ms: int = 30_000
    #: ``smart-turn``: after ``model_silence_ms`` of silence Smart Turn v3.2 says whether the
    #: turn is complete (probability >= ``turn_model_threshold``): it ends there, else after
    #: ``incomplete_silence_ms``. ``silence``: the turn ends after ``end_silence_ms`` of silence.
    turn_model: TurnModel = "silence"
    #: Smart Turn's probability at or above which a pause ends the turn.
    turn_model_threshold: float = 0.5
    #: Silence after which Smart Turn is asked.
    model_silence_ms: int = 200
    #: Silence that ends a turn Smart Turn called incomplete.
    incomplete_silence_ms: int = 1000
    #: Silence after the last speech window that Smart Turn hears (it is sensitive to it).
    model_tail_ms: int = 100
    #: Talk behind the caller (the VAD hears any voice): while the VAD hears speech, a partial
    #: that heard no word of the caller's in its last this many ms ends the turn as a pause
    #: would (services.stt.turns); 0: off. Needs partials and STT_FOREGROUND_DB.
    words_pause_ms: int = 0
    # transcripts
    #: Publish partial transcripts while the user speaks (captions).
    partials: bool = True
    #: Speech between two partials.
    partial_interval_ms: int = 400
    #: Partials decode on a second engine whose threads run at this nice value, so a final never
    #: waits for or shares the CPU with a partial; 0: partials share the final's engine.
    partial_nice: int = 19
    #: Start the final's decode as soon as the user falls silent (a speculative final), inside
    #: the silence window.
    speculative_final: bool = True
    #: Silence before the speculative final starts (0: at once).
    speculative_silence_ms: int = 0
    #: Publish the speculative final as a speculative EndOfTurn, so the LLM and TTS prepare the
    #: reply inside the silence window (the bridge plays it once the turn is committed).
    speculative_replies: bool = True
    #: Whisper's no-speech probability above which (with an average log probability under -1)
    #: a decode is taken as noise and its text dropped.
    no_speech_threshold: float = 0.6
    # capacity
    #: Sessions with state in this worker; more wait (backpressure).
    max_sessions: int = 32
    #: A session's state is dropped after this long without frames.
    session_idle_s: float = 60.0
    #: A session over ``max_sessions`` waits this long, then is refused.
    admit_timeout_s: float = 10.0
    #: With every place taken, a session without frames for this long makes room (0: never).
    evict_idle_s: float = 2.0
    #: With every place taken, a session that has sent no speech (nor a key) for this long makes
    #: room: first, and after far less than ``evict_idle_s`` (a flood of one-frame sessions
    #: never keeps a caller out).
    evict_unheard_s: float = 0.1
    #: On stop, how long finals still decoding may take.
    drain_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise SettingsError(f"STT_DEVICE must be cpu or cuda, got {self.device!r}")
        for name in ("cpu_threads", "beam_size", "max_sessions"):
            if getattr(self, name) < 1:
                raise SettingsError(f"STT_{name.upper()} must be >= 1")
        if self.narrowband_beam_size < 0:
            raise SettingsError("STT_NARROWBAND_BEAM_SIZE must be >= 0 (0: as STT_BEAM_SIZE)")
        if self.window_s and not 0 < self.window_margin_s < self.window_s <= 30:
            raise SettingsError("STT_WINDOW_S must be 0 (off) or above STT_WINDOW_MARGIN_S "
                                "(> 0) and at most 30")
        if self.denoise not in DENOISERS:
            raise SettingsError(f"STT_DENOISE must be one of {', '.join(DENOISERS)}, got "
                                f"{self.denoise!r}")
        if self.foreground_db < 0:
            raise SettingsError("STT_FOREGROUND_DB must be >= 0 (0: off)")
        if self.words_pause_ms < 0:
            raise SettingsError("STT_WORDS_PAUSE_MS must be >= 0 (0: off)")
        if self.words_pause_ms and not self.foreground_db:
            raise SettingsError("STT_WORDS_PAUSE_MS needs STT_FOREGROUND_DB: without it the talk "
                                "behind the caller, alone in the turns it leaves, is written "
                                "down as the caller's words")
        if self.turn_model not in ("silence", "smart-turn"):
            raise SettingsError(f"STT_TURN_MODEL must be silence or smart-turn, got "
                                f"{self.turn_model!r}")
        if not 0 < self.turn_model_threshold < 1:
            raise SettingsError("STT_TURN_MODEL_THRESHOLD must be within (0, 1)")
        if not 0 <= self.partial_nice <= 19:
            raise SettingsError("STT_PARTIAL_NICE must be 0..19")
        if (self.session_idle_s <= 0 or self.drain_timeout_s < 0 or self.evict_idle_s < 0
                or self.evict_unheard_s < 0):
            raise SettingsError("STT_SESSION_IDLE_S must be > 0, STT_DRAIN_TIMEOUT_S, "
                                "STT_EVICT_UNHEARD_S and "
                                "STT_EVICT_IDLE_S >= 0")
        try:
            self.turn_config()
        except ValueError as e:
            raise SettingsError(f"STT turn detection settings: {e}") from None

    def turn_config(self) -> TurnConfig:
        return TurnConfig(
            start_threshold=self.start_threshold,
            stop_threshold=self.stop_threshold,
            min_speech_ms=self.min_speech_ms,
            end_silence_ms=self.end_silence_ms,
            speculative_silence_ms=self.speculative_silence_ms,
            pre_roll_ms=self.pre_roll_ms,
            partial_interval_ms=self.partial_interval_ms,
            max_utterance_ms=self.max_utterance_ms,
            model_silence_ms=self.model_silence_ms,
            incomplete_silence_ms=self.incomplete_silence_ms,
            model_tail_ms=self.model_tail_ms,
            words_pause_ms=self.words_pause_ms if self.partials else 0,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SttSettings:
        env = Env("STT", environ)
        d = cls()
        device = env.str("DEVICE", d.device)
        if device not in ("cpu", "cuda"):
            raise SettingsError(f"STT_DEVICE must be cpu or cuda, got {device!r}")
        return cls(
            model=env.str("MODEL", d.model),
            device="cuda" if device == "cuda" else "cpu",
            compute_type=env.str("COMPUTE_TYPE", "") or None,
            partial_compute_type=env.str("PARTIAL_COMPUTE_TYPE", "") or None,
            cpu_threads=env.int("CPU_THREADS", d.cpu_threads),
            language=env.str("LANGUAGE", d.language),
            beam_size=env.int("BEAM_SIZE", d.beam_size),
            narrowband_beam_size=env.int("NARROWBAND_BEAM_SIZE", d.narrowband_beam_size),
            window_s=env.float("WINDOW_S", d.window_s),
            window_margin_s=env.float("WINDOW_MARGIN_S", d.window_margin_s),
            denoise=_denoiser(env.str("DENOISE", d.denoise)),
            denoise_decode=env.bool("DENOISE_DECODE", d.denoise_decode),
            foreground_db=env.float("FOREGROUND_DB", d.foreground_db),
            end_silence_ms=env.int("END_SILENCE_MS", d.end_silence_ms),
            min_speech_ms=env.int("MIN_SPEECH_MS", d.min_speech_ms),
            pre_roll_ms=env.int("PRE_ROLL_MS", d.pre_roll_ms),
            start_threshold=env.float("START_THRESHOLD", d.start_threshold),
            stop_threshold=env.float("STOP_THRESHOLD", d.stop_threshold),
            max_utterance_ms=env.int("MAX_UTTERANCE_MS", d.max_utterance_ms),
            turn_model=_turn_model(env.str("TURN_MODEL", d.turn_model)),
            turn_model_threshold=env.float("TURN_MODEL_THRESHOLD", d.turn_model_threshold),
            model_silence_ms=env.int("MODEL_SILENCE_MS", d.model_silence_ms),
            incomplete_silence_ms=env.int("INCOMPLETE_SILENCE_MS", d.incomplete_silence_ms),
            model_tail_ms=env.int("MODEL_TAIL_MS", d.model_tail_ms),
            words_pause_ms=env.int("WORDS_PAUSE_MS", d.words_pause_ms),
            partials=env.bool("PARTIALS", d.partials),
            partial_interval_ms=env.int("PARTIAL_INTERVAL_MS", d.partial_interval_ms),
            partial_nice=env.int("PARTIAL_NICE", d.partial_nice),
            speculative_final=env.bool("SPECULATIVE_FINAL", d.speculative_final),
            speculative_silence_ms=env.int("SPECULATIVE_SILENCE_MS", d.speculative_silence_ms),
            speculative_replies=env.bool("SPECULATIVE_REPLIES", d.speculative_replies),
            no_speech_threshold=env.float("NO_SPEECH_THRESHOLD", d.no_speech_threshold),
            max_sessions=env.int("MAX_SESSIONS", d.max_sessions),
            session_idle_s=env.float("SESSION_IDLE_S", d.session_idle_s),
            admit_timeout_s=env.float("ADMIT_TIMEOUT_S", d.admit_timeout_s),
            evict_idle_s=env.float("EVICT_IDLE_S", d.evict_idle_s),
            evict_unheard_s=env.float("EVICT_UNHEARD_S", d.evict_unheard_s),
            drain_timeout_s=env.float("DRAIN_TIMEOUT_S", d.drain_timeout_s),
        )


def _denoiser(value: str) -> DenoiserName:
    for name in DENOISERS:
        if value.strip().lower() == name:
            return name
    raise SettingsError(f"STT_DENOISE must be one of {', '.join(DENOISERS)}, got {value!r}")


def _turn_model(value: str) -> TurnModel:
    if value == "smart-turn":
        return "smart-turn"
    if value == "silence":
        return "silence"
    raise SettingsError(f"STT_TURN_MODEL must be silence or smart-turn, got {value!r}")
