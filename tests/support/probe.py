"""Looking at Redis from a test, with a plain synchronous client (the ``probe`` fixture).

redis-py types its replies loosely (a command may answer an awaitable, or None): these helpers
check the shape they read, so the tests type-check without casts.
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis

from conveyor.broker.keys import Keys

GROUP = "workers"  # the consumer group of every job stream

Entry = tuple[bytes, dict[bytes, bytes]]
Probe = redis.Redis | redis.RedisCluster  # what the helpers here accept


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(reply: Any) -> list[Entry]:
    assert isinstance(reply, list), reply
    return [(entry_id, fields) for entry_id, fields in reply]


def entries(probe: Probe, stream: str, start: str = "-", count: int | None = None) -> list[Entry]:
    """The stream's entries from ``start`` on (XRANGE), oldest first."""
    return _entries(probe.xrange(stream, min=start, count=count))


def last_entries(probe: Probe, stream: str, count: int = 1) -> list[Entry]:
    """The stream's last ``count`` entries (XREVRANGE), newest first."""
    return _entries(probe.xrevrange(stream, count=count))


def pending(probe: redis.Redis, stream: str, group: str = GROUP) -> list[dict[str, Any]]:
    """The group's pending entries (consumer, times_delivered, ...); none without a group."""
    try:
        found = probe.xpending_range(stream, group, "-", "+", 1000)
    except redis.ResponseError:  # no group: nobody ever read the stream
        return []
    assert isinstance(found, list), found
    return found


def pending_count(probe: Probe, stream: str, group: str = GROUP) -> int:
    """How many of the stream's entries the group holds unacked (0 without a group)."""
    try:
        return int(probe.xpending(stream, group)["pending"])
    except redis.ResponseError:  # no group: nothing was ever delivered
        return 0


def reply_streams(probe: redis.Redis, prefix: str) -> list[str]:
    """The reply streams under ``prefix`` (one per client)."""
    return [text(key) for key in probe.scan_iter(f"{prefix}:reply:*", _type="stream")]


def blocked_readers(probe: Probe) -> int:
    """Connections blocked in XREADGROUP now (Redis creates a consumer only once it got an
    entry, so waiting readers show only in CLIENT LIST)."""
    clients = probe.client_list()
    return sum(c["cmd"] == "xreadgroup" and "b" in c["flags"] for c in clients)


def fill_to_maxmemory(probe: redis.Redis, prefix: str) -> list[str]:
    """Writes until Redis refuses a write for want of memory, then lowers maxmemory 1 MB below
    what it holds: connection buffers come and go, and a Redis just at its limit would take
    some small writes again. Returns the keys written, to free the memory later."""
    keys: list[str] = []
    with contextlib.suppress(redis.exceptions.OutOfMemoryError):
        while True:
            key = f"{prefix}:filler:{len(keys)}"
            probe.set(key, b"x" * (256 * 1024))
            keys.append(key)
    used = int(probe.info("memory")["used_memory"])
    probe.config_set("maxmemory", used - 1024 * 1024)
    return keys


def wrong_type_stream(url: str, prefix: str, model: str = "m") -> str:
    """The job stream of ``model``, made a string: Redis refuses every stream command on it
    (WRONGTYPE)."""
    stream = Keys(prefix).jobs(model)
    with redis.Redis.from_url(url) as probe:
        probe.set(stream, "not a stream")
    return stream
