"""Several hosts on one machine, for multi-host tests: Linux network namespaces and a bridge.

A :class:`Network` makes one namespace holding a bridge (the "switch") and, per host, a
namespace with one veth pair: ``eth0`` inside the host, its peer a port of the bridge.
Addresses come from a private ``10.213.<random>.0/24`` that exists only inside these
namespaces. Nothing is ever created in the machine's own namespace: every ``ip`` command runs
with ``-n <namespace>`` (a veth is made in the bridge's namespace with its peer sent straight
to the host's), so the machine's interfaces and routes are never touched. :meth:`Network.cut`
takes a host's bridge port down (its cable pulled: the host keeps its address and sees
silence, no error), :meth:`Network.restore` brings it back. :meth:`Network.close` deletes the
namespaces, which removes their veths and bridge; processes still inside must be stopped
first (a namespace lives on while a process is in it).

Needs Linux, root and iproute2's ``ip``: :func:`unavailable` says why not, and
:class:`Network` raises :class:`NetnsUnavailable` when the kernel refuses a namespace, bridge
or veth.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

__all__ = ("Host", "NetnsError", "NetnsUnavailable", "Network", "unavailable")

_IP_TIMEOUT_S = 10.0  # one `ip` command; only a wedged kernel is slower
_BRIDGE = "br0"


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message holds the command and its stderr."""


class NetnsUnavailable(NetnsError):
    """Namespaces, bridges or veths cannot be made here (skip, do not fail)."""


def unavailable() -> str | None:
    """Why network namespaces cannot be made on this machine, or None if they may be."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (`ip netns add`)"
    if shutil.which("ip") is None:
        return "no `ip` binary (iproute2) on PATH"
    return None


def ip(*args: str) -> str:
    """Runs ``ip ARGS`` (bounded); returns its stdout, raises :class:`NetnsError` on failure."""
    argv = ["ip", *args]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=_IP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NetnsError(f"{' '.join(argv)}: {error}") from error
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True, slots=True)
class Host:
    """One simulated host: its namespace, its address on the test subnet, its bridge port."""

    role: str
    ns: str
    address: str
    port: str  # the bridge port (in the bridge's namespace) its eth0 is plugged into

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.ns, *argv]


class Network:
    """A bridge and the hosts plugged into it; see the module docstring.

    Namespaces are named ``cvy<6 hex>-<role>`` (unique per network), the subnet is
    ``10.213.<random 1..254>.0/24``, host ``n`` (from 0) gets ``.<n + 1>``.
    """

    def __init__(self) -> None:
        self.tag = f"cvy{uuid.uuid4().hex[:6]}"
        self.subnet = f"10.213.{random.randint(1, 254)}"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self.bridge_ns = f"{self.tag}-br"
        try:
            self._add_namespace(self.bridge_ns)
            ip("-n", self.bridge_ns, "link", "add", _BRIDGE, "type", "bridge")
            ip("-n", self.bridge_ns, "link", "set", _BRIDGE, "up")
        except NetnsError as error:
            self.close()
            raise NetnsUnavailable(str(error)) from error

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self._namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, role: str) -> Host:
        """A new namespace plugged into the bridge, ``eth0`` up with the next address."""
        if role in self.hosts:
            raise ValueError(f"host {role!r} exists already")
        ns = f"{self.tag}-{role}"
        port = f"v{len(self.hosts)}"
        address = f"{self.subnet}.{len(self.hosts) + 1}"
        try:
            self._add_namespace(ns)
            # both ends made away from the machine's namespace: bridge side, then peer sent in
            ip(
                "-n",
                self.bridge_ns,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
        except NetnsError as error:
            raise NetnsUnavailable(str(error)) from error
        ip("-n", self.bridge_ns, "link", "set", port, "master", _BRIDGE, "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        host = Host(role, ns, address, port)
        self.hosts[role] = host
        return host

    def cut(self, host: Host, *, silent: bool = False) -> None:
        """Cuts ``host`` off: every packet to and from it is lost from now on.

        By default its bridge port goes down, as a pulled cable: the host sees its link lose
        carrier. ``silent`` instead detaches the port from the bridge and leaves it up, as a
        partition further away: the host's link stays up and its packets vanish.
        """
        if silent:
            ip("-n", self.bridge_ns, "link", "set", host.port, "nomaster")
        else:
            ip("-n", self.bridge_ns, "link", "set", host.port, "down")

    def restore(self, host: Host) -> None:
        """Plugs ``host`` back in, either way it was cut (connections resume where TCP left
        them). Idempotent."""
        ip("-n", self.bridge_ns, "link", "set", host.port, "master", _BRIDGE, "up")

    def close(self) -> None:
        """Deletes every namespace made here (their veths and the bridge go with them).

        Idempotent; tries them all and raises the first failure afterwards.
        """
        failures: list[NetnsError] = []
        while self._namespaces:
            name = self._namespaces.pop()
            try:
                ip("netns", "del", name)
            except NetnsError as error:
                failures.append(error)
        self.hosts.clear()
        if failures:
            raise failures[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
