"""The agent's tools: declarations in the OpenAI ``tools`` format and their executor.

``ToolExecutor.execute`` never raises: bad arguments, unknown tools and failures come back as an
``{"error": ...}`` result the model can read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from voxbus.services.llm.engine import ChatMessage, ToolCallDelta, ToolSpec, tool_result_message

END_CALL: ToolSpec = {
    "type": "function",
    "function": {
        "name": "end_call",
        "description": (
            "Hang up and end the phone call. Use it only when the user says goodbye or asks "
            "to end the call."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "reason": {"type": "string", "description": "Why the call ends, in a few words."}
            },
            "required": [],
        },
    },
}

GET_CURRENT_TIME: ToolSpec = {
    "type": "function",
    "function": {
        "name": "get_current_time",
        "description": "Get the current date and time, optionally in a given time zone.",
        "parameters": {
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "description": "IANA time zone name such as 'Europe/Paris' or 'Asia/Tokyo'.",
                }
            },
            "required": [],
        },
    },
}

DEFAULT_TOOLS: tuple[ToolSpec, ...] = (END_CALL, GET_CURRENT_TIME)


@dataclass(frozen=True, slots=True)
class ToolResult:
    content: str  # JSON text handed back to the model
    ok: bool
    end_call: bool = False  # the stage should end the call after speaking


@cache
def _zones_by_lower_name() -> dict[str, str]:
    return {name.lower(): name for name in available_timezones()}


def _zone(name: str) -> ZoneInfo | None:
    """The zone for an IANA name, also when the case is wrong ("europe/paris"); None if unknown."""
    for candidate in (name, _zones_by_lower_name().get(name.strip().lower())):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                continue
    return None


def _error(message: str) -> ToolResult:
    return ToolResult(content=json.dumps({"error": message}), ok=False)


class ToolExecutor:
    """Runs the declared tools. ``now`` is injectable for tests (must return an aware datetime)."""

    def __init__(
        self,
        *,
        default_timezone: str = "UTC",
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self._default_timezone = default_timezone
        self._now = now or (lambda: datetime.now(UTC))
        self._handlers: dict[str, Callable[[dict[str, object]], ToolResult]] = {
            "end_call": self._end_call,
            "get_current_time": self._get_current_time,
        }

    @property
    def specs(self) -> Sequence[ToolSpec]:
        return DEFAULT_TOOLS

    def execute(self, name: str, arguments: str) -> ToolResult:
        handler = self._handlers.get(name)
        if handler is None:
            return _error(f"unknown tool {name!r}")
        try:
            args: object = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return _error(f"arguments are not valid JSON: {exc.msg}")
        if not isinstance(args, dict):
            return _error("arguments must be a JSON object")
        try:
            return handler(args)
        except Exception as exc:  # a tool bug must not end the turn
            return _error(f"{name} failed: {type(exc).__name__}")

    def run(self, call: ToolCallDelta) -> tuple[ToolResult, ChatMessage]:
        """Execute ``call`` and build the ``tool`` message that carries the result back."""
        result = self.execute(call.name, call.arguments)
        return result, tool_result_message(call.id, result.content)

    def _end_call(self, args: dict[str, object]) -> ToolResult:
        reason = args.get("reason")
        if reason is not None and not isinstance(reason, str):
            return _error("reason must be a string")
        return ToolResult(content=json.dumps({"status": "ending call"}), ok=True, end_call=True)

    def _get_current_time(self, args: dict[str, object]) -> ToolResult:
        name = args.get("timezone") or self._default_timezone
        if not isinstance(name, str):
            return _error("timezone must be a string")
        zone = _zone(name)
        if zone is None:
            return _error(f"unknown time zone {name[:64]!r}: use an IANA name like 'Europe/Paris'")
        local = self._now().astimezone(zone)
        return ToolResult(
            content=json.dumps(
                {
                    "timezone": zone.key,
                    "time": local.strftime("%H:%M"),
                    "date": local.strftime("%A, %d %B %Y"),
                    "iso": local.isoformat(timespec="seconds"),
                }
            ),
            ok=True,
        )
