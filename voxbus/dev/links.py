"""Network links the harness can cut: a TCP relay between two ports on loopback, in a thread of
its own (a stalled test loop must not stall the link). ``cut()`` closes every connection through
it and refuses new ones, like a broken cable or a firewall; ``mend()`` lets them through again.

The supercluster's gateways go through these in the tests (``ops.supercluster``'s
``Member.gateway_advertise``), so "the link between the regions breaks" is done to real
servers, not simulated."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from voxbus.ops.supercluster import Supercluster
from voxbus.runtime.procs import free_port


class Link:
    """Relays ``127.0.0.1:port`` to ``127.0.0.1:target``."""

    def __init__(self, target: int, *, name: str = "link") -> None:
        self.target = target
        self.name = name
        self.port = free_port()
        self.connections = 0  # accepted since start, cut or not
        self._cut = False
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"link-{name}",
                                        daemon=True)

    # ---- control (any thread) -----------------------------------------------------------------

    def start(self) -> Link:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)
        return self

    def cut(self) -> None:
        """Drop every connection now and refuse new ones until ``mend``."""
        asyncio.run_coroutine_threadsafe(self._set_cut(True), self._loop).result(5)

    def mend(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set_cut(False), self._loop).result(5)

    @property
    def is_cut(self) -> bool:
        return self._cut

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    # ---- the relay (its own loop) -------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _set_cut(self, cut: bool) -> None:
        self._cut = cut
        if cut:
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()

    async def _close(self) -> None:
        await self._set_cut(True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, up_writer}
        self._writers |= pair
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in pair:
                self._writers.discard(w)
                w.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


def link_gateways(cluster: Supercluster) -> dict[str, Link]:
    """Before ``cluster`` starts: every server's gateway reached through a started ``Link``
    (by server name), so the tests can cut the regions apart. Stop them after the cluster."""
    made: dict[str, Link] = {}
    for m in cluster.members:
        made[m.name] = Link(m.gateway_port, name=m.name).start()
        m.gateway_advertise = made[m.name].port
    return made


@contextlib.contextmanager
def cut(links: dict[str, Link]) -> Iterator[None]:
    """Every link cut inside the block, mended after it."""
    for link in links.values():
        link.cut()
    try:
        yield
    finally:
        for link in links.values():
            link.mend()
