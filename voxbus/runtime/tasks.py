"""Owned asyncio tasks: every background task has an owner that cancels and awaits it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger("voxbus.tasks")


class TaskSet:
    """Holds tasks until they finish; ``close`` cancels the rest and waits for them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(
        self, coro: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "task_failed", owner=self.name, task=task.get_name(), error=repr(task.exception())
            )

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Cancel every task and wait for them, at most ``timeout_s`` (a task that swallows its
        cancellation is logged and left behind rather than hanging the shutdown)."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for t in pending:
            log.error("task_did_not_stop", owner=self.name, task=t.get_name())


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
