"""structlog logs on stderr: JSON lines, or readable lines at a terminal. Transcripts, prompts
and replies go only under a ``pii`` key, so a deployment can drop or redact that one key."""

from __future__ import annotations

import logging
import os
import sys

import structlog

from voxbus.runtime.settings import SettingsError


def _drop_pii(
    _logger: object, _name: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    if "pii" in event:
        event["pii"] = "<redacted>"
    return event


def configure(level: str | None = None, *, log_pii: bool | None = None) -> None:
    """Logs to stderr. ``VOXBUS_LOG_LEVEL`` sets the level; ``VOXBUS_LOG_PII=1`` keeps the
    ``pii`` values (off by default); ``VOXBUS_LOG_FORMAT`` is ``json`` (one JSON object a line,
    the default unless stderr is a terminal) or ``console`` (readable lines, the default at a
    terminal)."""
    lvl = (level or os.environ.get("VOXBUS_LOG_LEVEL", "") or "info").upper()
    if not isinstance(logging.getLevelName(lvl), int):
        raise SettingsError(f"VOXBUS_LOG_LEVEL={lvl.lower()!r}: one of debug, info, warning, "
                            "error, critical")
    fmt = os.environ.get("VOXBUS_LOG_FORMAT", "") or (
        "console" if sys.stderr.isatty() else "json")
    if fmt not in ("json", "console"):
        raise SettingsError(f"VOXBUS_LOG_FORMAT={fmt!r}: json or console")
    keep_pii = log_pii if log_pii is not None else os.environ.get("VOXBUS_LOG_PII") == "1"
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if not keep_pii:
        processors.append(_drop_pii)
    if fmt == "json":
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(lvl)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
