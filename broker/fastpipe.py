"""A pipeline's round trip without the layers of ``Pipeline.execute`` that Conveyor never uses.

A shortcut of :mod:`conveyor.broker.fastpath`'s kind (its head lists the redis-py internals
read here too). redis-py 8's ``Pipeline.execute`` wraps every round trip in machinery for
features the project does not use: HIMPORT fieldsets prepared ahead of the commands,
observability records awaited before and after, a closure per try, a packer that may move to
a thread. Every answer, ack, claim and job the broker sends goes through a pipeline
(``broker.pipelining``), so that is paid once a round trip, by workers and clients alike.
Measured (``python -m bench.pipeline``, bench/README.md; 2 shared cores): 140 -> 131 us of
the sender's CPU a round trip of two commands (medians of 15 runs; most of a round trip is the
kernel's send and wake-up and the event loop's turn, which stay).

:func:`execute` takes the plain case only: a non-transaction pipeline of the standalone
client, nothing watched, no scripts, short enough for one pass of redis-py's own loop, a pool
of :class:`~conveyor.broker.fastpath.FastPool` (the fast paths are on), no HIMPORT fieldset
ever registered. Anything else goes to ``pipe.execute``. What it keeps of redis-py: the pool's
checkout and release, the connection's packing, sending and reading (with fastpath's own
shortcuts), each reply's parsing as ``Redis.parse_response`` does it (the command's response
callback; error replies handed back; ``parse_response`` itself for a reply whose options change
the read), the retry policy (``conn.retry.call_with_retry``, the connection dropped
before each new try, so a connection error re-sends the whole pipeline as redis-py's does) and
``Pipeline.reset``. A failure is met as ``Pipeline.execute`` meets it
(tests/integration/test_fastpath.py runs both paths through the same failures).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from redis.asyncio.client import Pipeline
from redis.asyncio.connection import AbstractConnection
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.exceptions import ResponseError

from conveyor.broker.fastpath import FastPool

__all__ = ("MAX_COMMANDS", "execute", "plain")

# Longest pipeline taken here: redis-py yields to the loop inside longer ones, and packs
# them in a thread (its own _PIPELINE_YIELD_MIN_COMMANDS and pack offload start higher).
MAX_COMMANDS = 256


def plain(pipe: Pipeline) -> bool:
    """Whether :func:`execute` takes ``pipe`` itself (else redis-py's ``execute`` does)."""
    return (
        type(pipe) is Pipeline  # first: a ClusterPipeline has no command stack
        and type(pipe.connection_pool) is FastPool
        and 0 < len(pipe.command_stack) <= MAX_COMMANDS
        and not pipe.is_transaction
        and not pipe.explicit_transaction
        and not pipe.watching
        and not pipe.scripts
        and pipe.connection is None
    )


def _plain_reply(name: object, options: Mapping[str, Any]) -> bool:
    """A reply Redis.parse_response would read plainly: no option that changes the read
    (raw bytes, a default for an error reply), and a command that leaves WATCH alone."""
    return (
        NEVER_DECODE not in options and EMPTY_RESPONSE not in options and name not in _WATCH_STATE
    )


_WATCH_STATE = frozenset({*Pipeline.UNWATCH_COMMANDS, "WATCH"})


def _no_fieldsets(conn: AbstractConnection) -> bool:
    """No HIMPORT fieldset was ever registered on the connection's client: redis-py would
    prepare none and discard none before the commands."""
    registry = getattr(conn, "himport_registry", None)
    return registry is None or registry.revision == 0


async def execute(pipe: Pipeline, raise_on_error: bool = True) -> list[Any]:
    """``await pipe.execute(raise_on_error)``, through the shortcut when the pipeline is plain."""
    if not plain(pipe):
        return await pipe.execute(raise_on_error=raise_on_error)
    stack = pipe.command_stack
    # the pipeline holds the connection, so that reset() gives it back, whatever happens
    pool = pipe.connection_pool
    conn = pipe.connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    if not _no_fieldsets(conn):
        return await pipe.execute(raise_on_error=raise_on_error)  # redis-py's own, on it

    callbacks = pipe.response_callbacks
    # redis-py's own parse_response for what the direct read below does not repeat
    plain_replies = not getattr(conn, "_resp2_fallback", True)

    async def attempt() -> list[Any]:
        await conn.send_packed_command(conn.pack_commands([args for args, _ in stack]))
        replies: list[Any] = []
        try:
            for args, options in stack:
                name = args[0]
                try:
                    if plain_replies and _plain_reply(name, options):
                        # Redis.parse_response's steps when no option changes the read: the
                        # reply, then the command's callback with its options but "keys"
                        reply = await conn.read_response()
                        callback = callbacks.get(name)
                        if callback is not None:
                            if "keys" in options:  # a copy: a retry sends the stack again
                                options = {k: v for k, v in options.items() if k != "keys"}
                            reply = callback(reply, **options)
                            if inspect.isawaitable(reply):
                                reply = await reply
                    else:
                        reply = await pipe.parse_response(conn, name, **options)
                except ResponseError as error:
                    reply = error
                replies.append(reply)
        except BaseException:
            # a reply unread (cancelled, or a callback raised): the rest of the batch is still
            # on the socket, and would be read as the next command's
            await conn.disconnect(nowait=True)
            raise
        return replies

    async def failed(error: Exception, failures: int) -> None:
        await conn.disconnect(error=error, failure_count=failures)

    try:
        replies: list[Any] = await conn.retry.call_with_retry(
            attempt, failed, with_failure_count=True
        )
    finally:
        await pipe.reset()  # type: ignore[no-untyped-call]
    if raise_on_error:
        pipe.raise_first_error(stack, replies)
    return replies
