"""Thread priorities: on a machine whose cores the stages share, work that can wait (partial
transcripts, the LLM's tokens after the first clause) yields the CPU to work a caller is waiting
for (the final transcript, the first spoken clause)."""

from __future__ import annotations

import os
import sys
import threading

import structlog

log = structlog.get_logger("voxbus.threads")


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value (Linux: per thread; threads it starts inherit it).
    Elsewhere a no-op: there it would renice the whole process."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as e:
        log.warning("thread_priority_not_set", nice=nice, error=str(e))
