"""Run a command inside a private network namespace with ``lo`` and one veth pair.

libwebrtc (inside the LiveKit rtc SDK) gathers no ICE candidates on loopback, so a room on
``127.0.0.1`` alone never connects, and in the machine's own namespace the clients would use the
machine's real interfaces. The recipe that works (see docs/notes on LiveKit): as root,
``unshare --net --fork``, then inside: ``lo`` up and a veth pair ``vb0``/``vb1`` with a private /30
that exists only there. livekit-server, the bridge, the callers and nats-server all run inside it;
nothing touches the machine's interfaces.

    python -m voxbus.dev.netns [--require] -- python -m pytest tests/bridge

runs the command inside such a namespace. Where that is impossible (not root, no ``unshare``/``ip``,
or the kernel refuses) it says why on stderr and runs the command as is, with
``VOXBUS_NETNS_UNAVAILABLE`` set to the reason, so the LiveKit tests skip with that reason; with
``--require`` it exits 3 instead.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

#: Set (to the namespace's inode) inside a namespace made by this module.
ENV_INSIDE: Final = "VOXBUS_NETNS"
#: Set to the reason when the runner could not make a namespace.
ENV_UNAVAILABLE: Final = "VOXBUS_NETNS_UNAVAILABLE"
#: The address of ``vb0`` inside the namespace (livekit-server's node_ip).
ENV_NODE_IP: Final = "VOXBUS_NETNS_IP"

VETH: Final = ("vb0", "vb1")
SUBNET: Final = ipaddress.IPv4Network("10.77.0.0/30")


@dataclass(frozen=True)
class Veth:
    names: tuple[str, str] = VETH
    subnet: ipaddress.IPv4Network = SUBNET

    @property
    def addresses(self) -> tuple[str, str]:
        a, b = list(self.subnet.hosts())[:2]
        return str(a), str(b)

    @property
    def node_ip(self) -> str:
        """The address livekit-server advertises (the first end of the pair)."""
        return self.addresses[0]

    def setup_commands(self) -> list[list[str]]:
        (n0, n1), (a0, a1) = self.names, self.addresses
        plen = self.subnet.prefixlen
        return [
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", n0, "type", "veth", "peer", "name", n1],
            ["ip", "addr", "add", f"{a0}/{plen}", "dev", n0],
            ["ip", "addr", "add", f"{a1}/{plen}", "dev", n1],
            ["ip", "link", "set", n0, "up"],
            ["ip", "link", "set", n1, "up"],
        ]


def _netns_inode(pid: str = "self") -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def in_private_netns() -> bool:
    """True inside a namespace made by this module (and only there): the marker is set, it names
    the namespace we are in, and that namespace is not the one of PID 1."""
    mine = _netns_inode()
    return (
        mine is not None
        and os.environ.get(ENV_INSIDE) == mine
        and mine != _netns_inode("1")
        and any(name == VETH[0] for _, name in socket.if_nameindex())
    )


def node_ip() -> str:
    """The address for livekit-server's ``node_ip`` inside the namespace; loopback outside."""
    return os.environ.get(ENV_NODE_IP, "") if in_private_netns() else "127.0.0.1"


def unavailable_reason() -> str | None:
    """Why no private namespace can be made here, or None when it can."""
    if sys.platform != "linux":
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "making a network namespace needs root (unshare --net); run as root"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"'{tool}' not found (install util-linux / iproute2)"
    probe = subprocess.run(
        ["unshare", "--net", "--fork", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"unshare --net refused: {probe.stderr.strip() or probe.returncode}"
    return None


def skip_reason() -> str | None:
    """For test fixtures: None inside the namespace, else why (and how to get there)."""
    if in_private_netns():
        return None
    why = os.environ.get(ENV_UNAVAILABLE) or unavailable_reason()
    how = (
        "run: .venv/bin/python -m voxbus.dev.netns -- "
        ".venv/bin/python -m pytest tests/bridge"
    )
    if why:
        return f"needs a private network namespace, but {why}"
    return f"needs a private network namespace ({how})"


def _setup_inside(veth: Veth) -> None:
    for cmd in veth.setup_commands():
        subprocess.run(cmd, check=True, capture_output=True, text=True)


def inner_main(argv: Sequence[str]) -> int:
    """Runs inside ``unshare``: set up the links, then become the command."""
    veth = Veth()
    try:
        _setup_inside(veth)
    except subprocess.CalledProcessError as e:
        print(f"netns: {' '.join(e.cmd)} failed: {e.stderr.strip()}", file=sys.stderr)
        return 3
    os.environ[ENV_INSIDE] = _netns_inode() or ""
    os.environ[ENV_NODE_IP] = veth.node_ip
    os.environ.pop(ENV_UNAVAILABLE, None)
    # Nothing outside exists in here: never let a proxy setting send a local URL elsewhere.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        os.environ.pop(var, None)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "*"
    os.execvp(argv[0], list(argv))


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def call(argv: Sequence[str], env: dict[str, str] | None = None, *, new_session: bool = False,
         forward_to_grandchild: bool = False) -> int:
    """``subprocess.call`` that lets the command shut down cleanly on Ctrl-C and SIGTERM.

    ``subprocess.call`` kills the command 0.25 s after a Ctrl-C; here the parent only waits, and
    passes SIGTERM on (to the command, or with ``forward_to_grandchild`` to the child of
    ``unshare``, which blocks SIGTERM and passes nothing on). With ``new_session`` the command
    runs in its own session, so a Ctrl-C in the terminal reaches only this parent, which passes
    SIGINT on to the command alone: the command's own children (servers, workers) are spared
    and it can stop them in order."""
    proc = subprocess.Popen(list(argv), env=env, start_new_session=new_session)

    def forward(signum: int, _frame: object) -> None:
        targets = _children(proc.pid) if forward_to_grandchild else [proc.pid]
        for pid in targets or [proc.pid]:
            try:
                os.kill(pid, signum)
            except OSError:
                pass

    def ignore(_signum: int, _frame: object) -> None:
        """The command got the same Ctrl-C from the terminal."""

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
        signal.SIGINT: signal.signal(signal.SIGINT, forward if new_session else ignore),
    }
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_in_netns(argv: Sequence[str], *, require: bool = False, new_session: bool = False) -> int:
    """Run ``argv`` inside a fresh private namespace and return its exit status. If none can be
    made: exit 3 with ``require``, else run ``argv`` here with the reason in the environment.
    ``new_session``: see ``call``."""
    if not argv:
        raise ValueError("no command")
    if in_private_netns():
        return call(argv, new_session=new_session)
    reason = unavailable_reason()
    if reason is not None:
        print(f"netns: no private network namespace: {reason}", file=sys.stderr)
        if require:
            return 3
        print("netns: running the command without one (LiveKit tests will skip)", file=sys.stderr)
        return call(argv, env={**os.environ, ENV_UNAVAILABLE: reason}, new_session=new_session)
    inner = [sys.executable, "-m", "voxbus.dev.netns", "--inside", "--", *argv]
    return call(["unshare", "--net", "--fork", "--kill-child", "--", *inner],
                new_session=new_session, forward_to_grandchild=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    inside = require = False
    while args and args[0] != "--":
        flag = args.pop(0)
        if flag == "--inside":
            inside = True
        elif flag == "--require":
            require = True
        else:
            print(f"usage: python -m voxbus.dev.netns [--require] -- CMD...  ({flag}?)",
                  file=sys.stderr)
            return 2
    if args and args[0] == "--":
        args.pop(0)
    if not args:
        print("usage: python -m voxbus.dev.netns [--require] -- CMD...",
              file=sys.stderr)
        return 2
    return inner_main(args) if inside else run_in_netns(args, require=require)


if __name__ == "__main__":
    sys.exit(main())
