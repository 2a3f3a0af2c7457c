"""Shared fixtures: a real nats-server per test (or NATS_URL), and a provisioned bus; and the
fast tier's guard (``tests/tier.py``) when ``VOXBUS_TEST_TIER=fast``."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Generator, Iterator

import pytest

from tests import tier
from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime.bus import Bus

REGION = "test"


def pytest_configure(config: pytest.Config) -> None:
    if tier.active():
        config.pluginmanager.register(FastTier(), "voxbus-fast-tier")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups for ``pytest -n 2 --dist loadgroup`` (scripts/test.sh): a module runs whole on one
    worker (a module-scoped server, such as the regions' supercluster, starts once), and the
    tests marked ``model`` (inference, with time bounds) all on one, one after another.
    scripts/test.sh runs those alone anyway: beside a second worker they missed their bounds."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        model = item.get_closest_marker("model") is not None
        item.add_marker(pytest.mark.xdist_group("models" if model else item.nodeid.split("::")[0]))


class FastTier:
    """``VOXBUS_TEST_TIER=fast``: no server, no model (``tests/tier.py``)."""

    def __init__(self) -> None:
        self.guard = tier.Guard()
        self.undo: list[Callable[[], None]] = []

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Armed once collected: collecting imports test modules, which load no model."""
        loaded = sorted(m for m in sys.modules if m.partition(".")[0] in tier.MODEL_RUNTIMES)
        if loaded:
            raise pytest.UsageError(
                f"the fast tier cannot watch {loaded[:3]}: imported while collecting (import a "
                "model runtime where the model is loaded, not at the top of a module)")
        mp = pytest.MonkeyPatch()
        for name, value in tier.child_env().items():
            mp.setenv(name, value)
        self.undo += [mp.undo, tier.install(self.guard)]

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        for undo in reversed(self.undo):
            undo()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """A refusal the code under test swallowed still fails the test."""
        report = yield
        refused = self.guard.new_refusals()
        if refused and not report.failed:
            report.outcome = "failed"
            report.longrepr = "\n".join(refused)
        return report


@pytest.fixture
def nats_server() -> Iterator[EmbeddedNats]:
    server = EmbeddedNats().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_url, regions=[REGION], partitions=8, name="test")
    await b.provision()
    try:
        yield b
    finally:
        await b.close()
