"""docs/settings.md is what ``python -m voxbus.dev.settings_doc`` prints, every setting says what
it does, and every variable the package reads is in it."""

from __future__ import annotations

import ast
import dataclasses
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

import voxbus
from voxbus.dev import settings_doc
from voxbus.dev.settings_doc import DOC, OTHER_VARIABLES, REGENERATE, SOURCES, Source
from voxbus.runtime.settings import SettingsError

pytestmark = pytest.mark.fast

PACKAGE = Path(voxbus.__file__).parent


def test_the_reference_is_what_the_code_says() -> None:
    expected = settings_doc.render()
    actual = DOC.read_text() if DOC.exists() else ""
    assert actual == expected, (
        f"{DOC.relative_to(settings_doc.REPO)} is out of date with the settings classes; "
        f"regenerate it: {REGENERATE}")


def test_every_setting_says_what_it_does() -> None:
    missing = [f"{s.cls.__name__}.{r.field}" for s in SOURCES for r in settings_doc.rows(s)
               if not r.description.strip()]
    assert not missing, (
        "give these fields a #: comment on the line above (it is their description in "
        f"docs/settings.md): {', '.join(missing)}")


def _modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def test_every_settings_class_is_in_the_reference() -> None:
    documented = {s.cls.__name__ for s in SOURCES}
    found = {node.name for _, tree in _modules() for node in ast.walk(tree)
             if isinstance(node, ast.ClassDef) and node.name.endswith("Settings")
             and any("dataclass" in ast.unparse(d) for d in node.decorator_list)}
    assert found <= documented, (
        f"add {', '.join(sorted(found - documented))} to voxbus.dev.settings_doc.SOURCES")


def _string_constants() -> dict[str, set[str]]:
    """Module-level ``NAME = "value"`` across the package (a variable's name is often one)."""
    found: dict[str, set[str]] = {}
    for _, tree in _modules():
        for node in tree.body:
            target, value = None, None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign):
                target, value = node.target, node.value
            if (isinstance(target, ast.Name) and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)):
                found.setdefault(target.id, set()).add(value.value)
    return found


def _variables_read() -> set[str]:
    """Every ``X.get(NAME)`` of an environment-like name in the package, ``NAME`` a string or a
    module constant holding one."""
    constants = _string_constants()
    found = set()
    for _, tree in _modules():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("get", "getenv") and node.args):
                continue
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names = {arg.value}
            elif isinstance(arg, ast.Name):
                names = constants.get(arg.id, set())
            elif isinstance(arg, ast.Attribute):
                names = constants.get(arg.attr, set())
            else:
                continue
            found |= {n for n in names if settings_doc.VARIABLE_NAME.fullmatch(n)}
    return found


def test_every_variable_the_package_reads_is_in_the_reference() -> None:
    by_classes = settings_doc.class_variables()
    others = _variables_read() - by_classes
    assert others == set(OTHER_VARIABLES), (
        "voxbus.dev.settings_doc.OTHER_VARIABLES must list exactly the variables read outside "
        f"the settings classes: missing {sorted(others - set(OTHER_VARIABLES))}, no longer "
        f"read {sorted(set(OTHER_VARIABLES) - others)}")
    assert not by_classes & set(OTHER_VARIABLES)


def _reader(source: Source) -> Callable[[Mapping[str, str]], object]:
    reader = source.reader
    fn = getattr(source.cls, reader) if isinstance(reader, str) else reader
    return typing.cast(Callable[[Mapping[str, str]], object], fn)


def _candidates(hint: object, default: object) -> list[str]:
    """Values to set a variable to, each different from the default (the first that the
    settings accept is used)."""
    if typing.get_origin(hint) is typing.Literal:
        return [str(a) for a in typing.get_args(hint) if a != default]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if len(args) == 1 else hint
    if base is bool:
        return ["off" if default else "on"]
    if base is int:
        d = default if isinstance(default, int) else 0
        return [str(v) for v in (d + 2, d * 2, d // 2, d * 2 + 3, d - 1) if v > 0 and v != d]
    if base is float:
        f = default if isinstance(default, float) else 1.0
        return [str(f * 1.5), str(f / 2)]
    if base is str:
        return [f"{default or ''}x"]
    return []


#: Variables that are refused without another one set (a one-line settings error says so).
NEEDS: dict[str, dict[str, str]] = {"STT_WORDS_PAUSE_MS": {"STT_FOREGROUND_DB": "6"}}


def test_each_variable_sets_the_field_it_is_listed_for() -> None:
    """The reference's variable column, checked by setting each variable of a plain field and
    reading the settings back."""
    unconfirmed = []
    for source in SOURCES:
        hints = typing.get_type_hints(source.cls)
        read = _reader(source)
        variables = settings_doc.field_variables(source)
        for f in dataclasses.fields(source.cls):
            names = variables.get(f.name, ())
            default = f.default if f.default is not dataclasses.MISSING else None
            candidates = _candidates(hints[f.name], default)
            if len(names) != 1 or not candidates:
                continue
            for value in candidates:
                try:
                    got = getattr(read({**NEEDS.get(names[0], {}), names[0]: value}), f.name)
                except SettingsError:
                    continue
                if str(got).lower() == value.lower() or (
                        isinstance(got, bool) and got == (value == "on")) or (
                        isinstance(got, float) and got == float(value)):
                    break
            else:
                unconfirmed.append(f"{names[0]} -> {source.cls.__name__}.{f.name}")
    assert not unconfirmed, f"these variables do not set the field listed: {unconfirmed}"
