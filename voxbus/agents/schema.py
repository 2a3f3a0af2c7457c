"""A Python function's signature and docstring as the JSON schema a model is offered: no
hand-written schemas.

Types: ``str``, ``int``, ``float``, ``bool``, ``Literal[...]``, ``enum.Enum``, ``list[X]``,
``dict[str, X]``, ``X | None`` and ``Annotated[X, "description"]``. A parameter with a default
is optional. Descriptions come from the docstring: its first paragraph describes the tool, and a
Google-style ``Args:`` section (``name: text``) describes the parameters.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin


class SchemaError(TypeError):
    """A tool's signature cannot be offered to a model (the message says which parameter)."""


_SIMPLE: dict[Any, dict[str, Any]] = {
    str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"},
    bool: {"type": "boolean"}, dict: {"type": "object"}, list: {"type": "array"},
}


def type_schema(hint: Any, where: str) -> dict[str, Any]:
    """The JSON schema of one annotation."""
    origin, args = get_origin(hint), get_args(hint)
    if hint in _SIMPLE:
        return dict(_SIMPLE[hint])
    if origin is typing.Annotated:
        inner = type_schema(args[0], where)
        notes = [a for a in args[1:] if isinstance(a, str)]
        if notes:
            inner["description"] = " ".join(notes)
        return inner
    if origin is Literal:
        values = list(args)
        kinds = {type(v) for v in values}
        out = type_schema(kinds.pop(), where) if len(kinds) == 1 else {}
        return {**out, "enum": values}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return type_schema(Literal[tuple(m.value for m in hint)], where)
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        item = args[0] if args else str
        return {"type": "array", "items": type_schema(item, where)}
    if origin is dict:
        value = args[1] if len(args) == 2 else str
        return {"type": "object", "additionalProperties": type_schema(value, where)}
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return type_schema(rest[0], where)
        return {"anyOf": [type_schema(a, where) for a in rest]}
    raise SchemaError(f"{where}: type {hint!r} cannot be offered to a model (use str, int, "
                      "float, bool, Literal, an Enum, list or dict of those)")


_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a Google-style docstring."""
    text = inspect.cleandoc(doc or "")
    summary: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in text.splitlines():
        if _ARGS_HEADER.match(line):
            section, current = "args", None
            continue
        if section is None:
            if re.match(r"^\s*(Returns|Raises|Yields|Examples?|Notes?):\s*$", line):
                section = "other"
                continue
            summary.append(line)
            continue
        if section != "args":
            continue
        if not line.strip():
            current = None
            continue
        if re.match(r"^\S.*:\s*$", line):  # the next section ("Returns:")
            section = "other"
            continue
        m = _ARG_LINE.match(line)
        if m and (current is None or len(line) - len(line.lstrip()) <= _indent(params, line)):
            current = m.group(1).lstrip("*")
            params[current] = m.group(3).strip()
        elif current is not None:
            params[current] = (params[current] + " " + line.strip()).strip()
    paragraphs = "\n".join(summary).strip().split("\n\n")
    description = " ".join(paragraphs[0].split()) if paragraphs and paragraphs[0] else ""
    return description, params


def _indent(params: dict[str, str], line: str) -> int:
    return 8 if not params else len(line) - len(line.lstrip())


def function_schema(fn: Callable[..., Any], *, skip: frozenset[str] = frozenset()
                    ) -> tuple[str, dict[str, Any]]:
    """(description, JSON schema of the arguments object) of ``fn``; ``skip`` names parameters
    the model does not fill (the tool's context)."""
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # noqa: BLE001 - a bad annotation: said in one line
        raise SchemaError(f"{name}: its type hints cannot be read: {exc}") from None
    description, notes = parse_docstring(fn.__doc__)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.name in skip or param.name == "self":
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise SchemaError(f"{name}: *{param.name} cannot be offered to a model")
        if param.name not in hints:
            raise SchemaError(f"{name}: parameter {param.name!r} needs a type hint")
        prop = type_schema(hints[param.name], f"{name}({param.name})")
        if param.name in notes and "description" not in prop:
            prop["description"] = notes[param.name]
        if param.default is param.empty:
            required.append(param.name)
        elif param.default is not None and isinstance(param.default, str | int | float | bool):
            prop["default"] = param.default
        properties[param.name] = prop
    return description, {"type": "object", "properties": properties, "required": required}
