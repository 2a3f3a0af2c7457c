"""The browser page in a real browser: Debian's chromium, headless, with a fake microphone that
plays a committed question WAV, opens ``voxbus web``'s page, joins a real LiveKit room with the
real agent (Whisper, SmolLM2, Piper workers and the bridge on a real nats-server), and is asked,
through its own DOM, what it saw: the user's caption shows the question, the agent's the reply,
the agent's audio arrived (not silent), and a turn's latency was measured. A screenshot of the
page after the answer is written to ``tests/bridge/output/browser-answer.png``."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bridge.caller import Tap
from tests.bridge.test_voice_loop import (  # noqa: F401 - fixtures
    Agent,
    agent_factory,
    kokoro,
    piper,
    start_agent,
    whisper,
)
from voxbus.contracts.messages import ReplyEnd
from voxbus.dev.livekit_server import LiveKitServer
from voxbus.runtime.bus import Bus
from voxbus.services.bridge.bridge import Bridge
from voxbus.services.llm.settings import DEFAULT_SYSTEM_PROMPT
from voxbus.services.stt.engine import WhisperEngine
from voxbus.services.stt.normalize import normalize_text
from voxbus.services.tts.engine import Synthesizer
from voxbus.web.server import WebApp, check_bundle

pytestmark = [pytest.mark.livekit, pytest.mark.model]

QUESTION = Path(__file__).resolve().parents[2] / "voxbus" / "dev" / "data" / "question.wav"
OUTPUT = Path(__file__).with_name("output")


def _browser(url: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert chromium and driver, "Debian's chromium and chromium-driver are needed (./dev setup)"
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={QUESTION}%noloop",
                "--autoplay-policy=no-user-gesture-required", "--window-size=900,900"):
        opts.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=opts)
    browser.get(url)
    return browser


def _seen(browser: Any) -> dict[str, Any]:
    result: dict[str, Any] = browser.execute_script("""
        const caps = [...document.querySelectorAll('.caption')].map(e => ({
            side: e.classList.contains('user') ? 'user' : 'agent',
            text: e.textContent, final: e.dataset.final === 'true'}));
        return {caps, joined: document.body.dataset.joined === 'true',
                agentMax: parseFloat(document.body.dataset.agentMax || '0'),
                latency: [...document.querySelectorAll('#latency li')].map(e => +e.dataset.ms),
                status: document.getElementById('status').textContent,
                agents: [...document.querySelectorAll('#agent option')].map(o => o.value)};
    """)
    return result


@pytest.fixture
def output() -> Iterator[Path]:
    OUTPUT.mkdir(exist_ok=True)
    yield OUTPUT


async def test_browser_page_talks_to_the_agent(
    livekit: LiveKitServer, bridge: Bridge, bus: Bus, whisper: WhisperEngine,  # noqa: F811
    piper: Synthesizer, agent_factory: list[Agent], output: Path, tap: Tap,  # noqa: F811
) -> None:
    check_bundle()
    agent_factory.append(await start_agent(bus, bridge, whisper, piper, DEFAULT_SYSTEM_PROMPT))

    async def dispatch(room: str, agent: str) -> str:
        await bridge.dispatch(room, agent=agent)
        return ""

    async def published() -> list[str]:  # the picker offers them; the page keeps the default
        return ["events", "frontdesk"]

    app = WebApp(livekit.url, livekit.config.api_key, livekit.config.api_secret, dispatch,
                 published)
    server = await app.serve("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    browser = await asyncio.to_thread(_browser,
                                      f"http://127.0.0.1:{port}/?room=browser-room&autojoin=1")
    try:
        deadline = time.monotonic() + 90
        while True:
            seen = await asyncio.to_thread(_seen, browser)
            users = [c for c in seen["caps"] if c["side"] == "user" and c["final"]]
            agents = [c for c in seen["caps"] if c["side"] == "agent" and c["final"]]
            if users and agents and seen["agentMax"] > 0.01 and seen["latency"]:
                break
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # the rest of the answer, for the screenshot
        shot = output / "browser-answer.png"
        await asyncio.to_thread(browser.save_screenshot, str(shot))
        print(f"\nscreenshot: {shot}\ncaptions: {seen['caps']}\nlatency ms: {seen['latency']}")
    finally:
        await asyncio.to_thread(browser.quit)
        server.close()
    heard = normalize_text(users[0]["text"])
    assert "museum" in heard and "open" in heard, users
    # the agent's caption is the reply the LLM wrote (the one the commit named)
    ends = [m.text for m in tap.of(ReplyEnd) if m.text.strip()]
    assert ends and agents[0]["text"] == f"Agent: {ends[0]}", (agents, ends)
    assert shot.stat().st_size > 10_000
    assert 0 < seen["latency"][0] < 20_000
    assert seen["agents"] == ["", "events", "frontdesk"]  # the picker: default, then published
