"""``voxbus web``'s routes without a browser: the agent picker's list and the agent sent with
the dispatch (the page itself, in a real browser: ``test_browser``)."""

from __future__ import annotations

import json

import pytest

from voxbus.web.server import WebApp

pytestmark = pytest.mark.fast


def _app(agents: list[str] | Exception | None) -> tuple[WebApp, list[tuple[str, str]]]:
    asked: list[tuple[str, str]] = []

    async def dispatch(room: str, agent: str) -> str:
        asked.append((room, agent))
        return "no agent 'ghost' in region 'local' (published: frontdesk)" if agent == "ghost" \
            else ""

    async def listed() -> list[str]:
        if isinstance(agents, Exception):
            raise agents
        return agents or []

    return WebApp("ws://lk", "key", "secret" * 8, dispatch,
                  None if agents is None else listed), asked


async def test_the_page_lists_the_region_s_agents() -> None:
    app, _ = _app(["events", "frontdesk"])
    status, ctype, body = await app.route("/agents")
    assert (status, ctype, json.loads(body)) == (200, "application/json",
                                                 {"agents": ["events", "frontdesk"]})
    for none in (None, OSError("no NATS")):  # nothing to list: the picker offers the default
        status, _, body = await _app(none)[0].route("/agents")
        assert (status, json.loads(body)) == (200, {"agents": []})


async def test_the_chosen_agent_goes_with_the_dispatch() -> None:
    app, asked = _app(["frontdesk"])
    status, _, body = await app.route("/token?room=r1&agent=frontdesk")
    assert status == 200 and json.loads(body)["room"] == "r1"
    status, _, _ = await app.route("/token?room=r2")
    assert status == 200
    assert asked == [("r1", "frontdesk"), ("r2", "")]
    status, _, body = await app.route("/token?room=r3&agent=ghost")
    assert status == 503 and "no agent 'ghost'" in json.loads(body)["error"]
    status, _, body = await app.route("/token?room=r4&agent=Not%20A%20Name")
    assert status == 400 and asked[-1][0] == "r3"
