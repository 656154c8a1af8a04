"""Which server Conveyor talks to, and whether it is new enough.

Conveyor needs Redis 7.0 or newer: clients wait on their bells with BLMPOP, a script reads
TIME before it writes (scripts replicate their effects by default since 7.0), and ``conveyor
inspect`` reads XINFO's lag. On Redis 6 a worker would start and serve some calls, and a
client would fail each call with "unknown command `BLMPOP`": a worker asks first, and stops
with the version it found.

``HELLO`` with no argument answers the server's name and version and leaves the connection's
protocol as it is; it needs no ACL permission (as AUTH), so the user README sets up may send
it. A server without HELLO (Redis < 6) or a proxy that refuses it says nothing: the worker then
goes on, and a command the server lacks fails with a hint (``broker.errors``).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.client import Redis
from redis.exceptions import ResponseError

__all__ = ("MINIMUM_VERSION", "ServerVersion", "read_server_version")

MINIMUM_VERSION = (7, 0)


class ServerVersion:
    """A server's name (``redis``, ``valkey``) and version, as HELLO gives them."""

    __slots__ = ("name", "version")

    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version

    def __str__(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def too_old(self) -> bool:
        """Older than :data:`MINIMUM_VERSION`; a version that is not numbers is not judged."""
        parts = self.version.split(".")[:2]
        if len(parts) < 2 or not all(part.isdigit() for part in parts):
            return False
        return (int(parts[0]), int(parts[1])) < MINIMUM_VERSION


async def read_server_version(redis: Redis) -> ServerVersion | None:
    """The server's name and version, or None when it does not say (no HELLO)."""
    try:
        reply = await redis.execute_command("HELLO")  # type: ignore[no-untyped-call]
    except ResponseError:
        return None
    fields = _fields(reply)
    version = fields.get("version")
    if not version:
        return None
    return ServerVersion(fields.get("server") or "redis", version)


def _fields(reply: Any) -> dict[str, str]:
    """HELLO's map: a dict (RESP3) or a flat list of names and values (RESP2)."""
    if isinstance(reply, list):
        reply = dict(zip(reply[::2], reply[1::2], strict=False))
    if not isinstance(reply, dict):
        return {}
    return {_text(key): _text(value) for key, value in reply.items()}


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
