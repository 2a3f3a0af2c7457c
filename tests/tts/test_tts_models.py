"""Model assembly and verification, vendored voices."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from voxbus.services.tts import models
from voxbus.services.tts.models import (
    MODEL_FILENAME,
    MODEL_SHA256,
    MODEL_SIZE,
    VOICE_BYTES,
    VOICES_DIR,
    ModelError,
    cache_dir,
    ensure_model,
    load_voice,
    load_voices,
    resolve_model_path,
    verify_model,
)

pytestmark = pytest.mark.fast

VENDORED = ("af_heart", "am_michael", "bf_emma")


def test_cache_dir_precedence(tmp_path: Path) -> None:
    assert cache_dir({"VOXBUS_CACHE": str(tmp_path / "v"), "XDG_CACHE_HOME": "/x"}) == (
        tmp_path / "v"
    )
    assert cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "voxbus"
    assert cache_dir({}) == Path.home() / ".cache" / "voxbus"


def test_pinned_model_constants() -> None:
    assert MODEL_SIZE == 92_361_271
    assert MODEL_SHA256.startswith("6e742170d309")
    assert len(MODEL_SHA256) == 64


def test_part_packages_are_installed() -> None:
    parts = models.model_part_paths()
    assert [p.parent.name for p in parts] == list(models.MODEL_PART_PACKAGES)
    assert sum(p.stat().st_size for p in parts) == MODEL_SIZE


def test_truncated_model_is_rejected_then_repaired_then_reused(tmp_path: Path) -> None:
    """The one test that joins the 92 MB model (into a temporary cache)."""
    first_part = models.model_part_paths()[0]
    target = tmp_path / MODEL_FILENAME
    with first_part.open("rb") as src, target.open("wb") as dst:
        dst.write(src.read(1 << 20))  # a truncated copy of the model's first megabyte
    assert not verify_model(target)

    assert ensure_model(tmp_path) == target
    assert target.stat().st_size == MODEL_SIZE
    assert verify_model(target)
    assert not list(tmp_path.glob("*.tmp")), "no temporary file may be left behind"

    before = target.stat()
    assert ensure_model(tmp_path) == target  # valid: reused, not re-joined
    after = target.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_corrupted_same_size_file_is_rejected(tmp_path: Path) -> None:
    parts = _fake_parts(tmp_path)
    size, sha = _expected(parts)
    target = tmp_path / "cache" / MODEL_FILENAME
    ensure_model(tmp_path / "cache", parts=parts, size=size, sha256=sha)
    data = bytearray(target.read_bytes())
    data[10] ^= 0xFF
    target.write_bytes(bytes(data))
    assert not verify_model(target, size=size, sha256=sha)
    ensure_model(tmp_path / "cache", parts=parts, size=size, sha256=sha)
    assert target.read_bytes() == b"".join(p.read_bytes() for p in parts)


def test_parts_that_do_not_match_raise_and_leave_nothing(tmp_path: Path) -> None:
    parts = _fake_parts(tmp_path)
    size, _ = _expected(parts)
    cache = tmp_path / "cache"
    with pytest.raises(ModelError, match="does not match"):
        ensure_model(cache, parts=parts, size=size, sha256="0" * 64)
    assert list(cache.iterdir()) == []


def test_resolve_model_path(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        resolve_model_path(tmp_path / "missing.onnx")
    other = tmp_path / "other.onnx"
    other.write_bytes(b"x")
    assert resolve_model_path(str(other)) == other  # an explicit model is used as is


@pytest.mark.parametrize("name", VENDORED)
def test_vendored_voice(name: str) -> None:
    path = VOICES_DIR / f"{name}.bin"
    assert path.stat().st_size == VOICE_BYTES == 510 * 256 * 4
    voice = load_voice(name)
    assert voice.shape == (510, 1, 256)
    assert voice.dtype == np.float32
    assert np.isfinite(voice).all()
    assert float(np.abs(voice).max()) > 0.0


def test_vendored_voices_and_notice() -> None:
    assert models.available_voices() == VENDORED
    assert set(load_voices()) == set(VENDORED)
    notice = (VOICES_DIR / "NOTICE").read_text()
    assert "Apache License, Version 2.0" in notice
    assert "kokoro-js@1.2.1" in notice
    for name in VENDORED:
        digest = hashlib.sha256((VOICES_DIR / f"{name}.bin").read_bytes()).hexdigest()
        assert digest in notice


def test_voice_of_wrong_size_is_rejected(tmp_path: Path) -> None:
    shutil.copy(VOICES_DIR / "af_heart.bin", tmp_path / "good.bin")
    (tmp_path / "bad.bin").write_bytes(b"\0" * 100)
    assert load_voice("good", tmp_path).shape == (510, 1, 256)
    with pytest.raises(ModelError, match="expected 522240"):
        load_voice("bad", tmp_path)
    with pytest.raises(ModelError, match="not found"):
        load_voice("nobody", tmp_path)
    with pytest.raises(ModelError, match="no voice files"):
        load_voices(tmp_path / "empty")


def _fake_parts(tmp_path: Path) -> list[Path]:
    parts = []
    for i in range(4):
        part = tmp_path / f"part{i}.bin"
        part.write_bytes(bytes([i]) * (1000 + i))
        parts.append(part)
    return parts


def _expected(parts: list[Path]) -> tuple[int, str]:
    data = b"".join(p.read_bytes() for p in parts)
    return len(data), hashlib.sha256(data).hexdigest()
