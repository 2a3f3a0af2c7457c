"""``@tool``: a plain ``async def`` (or ``def``) a model may call.

Its name, docstring and type hints are what the model is offered; a parameter annotated
``ToolContext`` is not offered: the tool worker fills it (the session, and ``key``, the call's
idempotency key: use it to make a side effect happen once, as a unique key in your database or
the ``Idempotency-Key`` of an HTTP API).

A plain ``def`` runs in a thread of its own, so a blocking call in it never holds up the worker.
The return value is handed to the model as JSON (``str``, numbers, lists, dicts, dataclasses and
msgspec structs). Raise ``ToolError`` to tell the model what went wrong in words; any other
exception reaches the model as "<tool> failed" and is logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import time
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, overload

import msgspec

from voxbus.agents.schema import SchemaError, function_schema
from voxbus.contracts.agents import ToolDecl, ToolOutcome, valid_name


class ToolError(Exception):
    """Raised by a tool: its message is what the model is told."""


@dataclass(frozen=True, kw_only=True)
class ToolContext:
    """What a tool knows about its call."""

    session: str
    call_id: str
    agent: str
    region: str = ""
    log: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The call's idempotency key, unique across sessions and the same when the call is made
        again (a replica redoing the turn) or delivered again (a tool replica died mid-call)."""
        return f"{self.session}/{self.call_id}"


@dataclass(frozen=True)
class Tool:
    """A function offered to the model (made by ``@tool``)."""

    fn: Callable[..., Any]
    decl: ToolDecl
    context_param: str | None = None

    @property
    def name(self) -> str:
        return self.decl.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)  # still callable as the plain function (tests)

    async def run(self, arguments: str, ctx: ToolContext) -> ToolOutcome:
        """Run with the model's ``arguments`` (JSON text); never raises but for cancellation."""
        started = time.perf_counter()
        ok, result = await self._run(arguments, ctx)
        return ToolOutcome(call_id=ctx.call_id, tool=self.name, ok=ok,
                           result=result, ms=round((time.perf_counter() - started) * 1000, 1),
                           at_ns=time.time_ns())

    async def _run(self, arguments: str, ctx: ToolContext) -> tuple[bool, str]:
        try:
            args: object = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return False, _error(f"arguments are not valid JSON: {exc.msg}")
        if not isinstance(args, dict):
            return False, _error("arguments must be a JSON object")
        kwargs = dict(args)
        problem = _check(self.decl.parameters, kwargs)
        if problem:
            return False, _error(problem)
        if self.context_param:
            kwargs[self.context_param] = ctx
        try:
            if inspect.iscoroutinefunction(self.fn):
                value = await self.fn(**kwargs)
            else:  # a plain def may block (a database, a file): not on the worker's loop,
                value = await asyncio.to_thread(self.fn, **kwargs)  # which renews its leases
                if inspect.isawaitable(value):
                    value = await value
            return True, to_json(value)
        except ToolError as exc:
            return False, _error(str(exc) or f"{self.name} failed")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a tool's bug must not end the turn
            if ctx.log is not None:
                ctx.log.warning("tool_failed", tool=self.name, error=f"{type(exc).__name__}",
                                pii={"detail": str(exc)[:500]})
            return False, _error(f"{self.name} failed")


def _error(message: str) -> str:
    return json.dumps({"error": message}, ensure_ascii=False)


def to_json(value: object) -> str:
    if isinstance(value, str):
        return json.dumps({"result": value}, ensure_ascii=False)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return msgspec.json.encode(value).decode()


def _check(schema: dict[str, Any], args: dict[str, Any]) -> str:
    """A one-line reason the model's arguments do not fit, or ""."""
    props: dict[str, Any] = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in args:
            return f"missing argument {name!r}"
    for name in list(args):
        if name not in props:  # small models add what the tool never asked for: not passed on
            del args[name]
    for name, value in list(args.items()):
        kind = props[name].get("type")
        if kind == "integer" and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            args[name] = value = int(value)  # small models quote numbers
        if kind == "number" and isinstance(value, int | str) and not isinstance(value, bool):
            try:
                args[name] = value = float(value)
            except ValueError:
                pass
        if kind == "integer" and isinstance(value, float) and value.is_integer():
            args[name] = value = int(value)
        expected = {"string": str, "integer": int, "number": float, "boolean": bool,
                    "array": list, "object": dict}.get(kind or "")
        if expected is not None and (not isinstance(value, expected)
                                     or (expected is int and isinstance(value, bool))):
            if value is None and name not in schema.get("required", []):
                continue
            return f"argument {name!r} must be {kind}"
        if "enum" in props[name] and value not in props[name]["enum"]:
            return f"argument {name!r} must be one of {props[name]['enum']}"
    return ""


def _context_param(fn: Callable[..., Any]) -> str | None:
    """The parameter the tool worker fills with the call's ``ToolContext`` (annotated with it,
    optionally ``| None``), if any."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - said by the schema, with the parameter's name
        hints = {}
    for param in inspect.signature(fn).parameters.values():
        hint = hints.get(param.name, param.annotation)
        if hint is ToolContext or ToolContext in typing.get_args(hint) or (
            isinstance(hint, str) and hint.split("|")[0].strip() == "ToolContext"
        ):
            return param.name
    return None


@overload
def tool(fn: Callable[..., Awaitable[Any]] | Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, read_only: bool = False, filler: str = "",
    filler_after_s: float = 0.5, timeout_s: float = 10.0,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None, read_only: bool = False,
    filler: str = "", filler_after_s: float = 0.5, timeout_s: float = 10.0,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make ``fn`` a tool. ``read_only``: free of side effects (it may start before the turn is
    committed). ``filler``: said when it has not answered after ``filler_after_s``.
    ``timeout_s``: after this long the model is told it failed."""

    def make(f: Callable[..., Any]) -> Tool:
        tool_name = name or f.__name__
        if not valid_name(tool_name):
            raise SchemaError(f"tool name {tool_name!r}: lowercase letters, digits and '_', "
                              "starting with a letter")
        if timeout_s <= 0 or filler_after_s < 0:
            raise SchemaError(f"tool {tool_name!r}: timeout_s must be positive")
        ctx_param = _context_param(f)
        description, parameters = function_schema(
            f, skip=frozenset({ctx_param} if ctx_param else ()))
        if not description:
            raise SchemaError(f"tool {tool_name!r} needs a docstring: it tells the model "
                              "when to call it")
        decl = ToolDecl(name=tool_name, description=description, parameters=parameters,
                        read_only=read_only, filler=filler, filler_after_s=filler_after_s,
                        timeout_s=timeout_s)
        return Tool(f, decl, ctx_param)

    return make(fn) if fn is not None else make
