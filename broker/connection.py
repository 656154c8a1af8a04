"""Transitional: removed once the faces land (ClientBroker, WorkerBroker in conveyor.broker).

What ``conveyor.broker.connection`` (and ``conveyor.broker.memory``) offered is now in
:mod:`conveyor.broker.settings` (the URL), :mod:`conveyor.broker.clients` (making clients),
:mod:`conveyor.broker.errors` (translating Redis errors, OOM included) and
:mod:`conveyor.broker.fastpath` (redis-py internals). These are the names worker/, client/
and the broker modules they own still import from here; new code imports the modules above,
or ``conveyor.broker`` from outside the broker.
"""

from __future__ import annotations

from conveyor.broker.clients import create_client, create_sync_client, ping
from conveyor.broker.errors import is_out_of_memory, out_of_memory, translate_errors
from conveyor.broker.settings import RedisSettings, default_redis_url

__all__ = (
    "RedisSettings",
    "create_client",
    "create_sync_client",
    "default_redis_url",
    "is_out_of_memory",
    "out_of_memory",
    "ping",
    "translate_errors",
    "translate_oom",
)

# translate_errors turns an OOM refusal into BrokerOutOfMemory itself now; the old pairing
# `with translate_errors(x), translate_oom(x):` still works (the outer one leaves a
# ConveyorError alone) and can drop its second half.
translate_oom = translate_errors
