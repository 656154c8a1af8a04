"""Before the first call to a model: does any worker serve it? If not, fail fast.

A call to a model no worker serves (a typo, a model whose ``load()`` returned False) would
otherwise wait out its whole timeout, and its ``XADD`` would leave a job stream behind for
good (and its cancel, an entry in the model's control stream). So the client checks once per
job stream, and sends nothing when the answer is no:

1. the stream has the workers' consumer group (``XINFO GROUPS``): a worker serves it, or did
   (workers scaled to zero, restarting): send, and remember the stream (no more checks),
   unless the live workers that have the model all report that its ``load()`` returned
   False (:class:`ModelNotServed` at once: the model was served before, not now);
2. else the live workers' heartbeats (``ClientBroker.read_fleet``): a worker loading the model (it
   creates the group once ready; jobs sent before are served) means send; a worker that
   serves the model's name but not the version asked for, or whose ``load()`` of it returned
   False, means :class:`ModelNotServed` at once;
3. else nobody serves it *yet*, perhaps: a worker may be starting (a process between its
   start and its first heartbeat). The client looks again every 0.25 s for a short grace,
   2 s when other workers are live, 10 s when none is (a fleet starting with its clients, as
   ``docker compose up``), both bounded by the call's timeout; then raises
   :class:`ModelNotServed`, naming the models the fleet serves.

When the ACL refuses those reads, or Redis is out after having answered, the client cannot
tell and sends the call as before.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from conveyor.broker import ClientBroker, FleetView
from conveyor.broker.keys import Keys
from conveyor.errors import BrokerConnectionError, ModelNotServed

__all__ = ("EMPTY_FLEET_GRACE_S", "GRACE_S", "ServedCheck")

GRACE_S = 2.0  # live workers, none lists the model: one may be about to beat for the first time
EMPTY_FLEET_GRACE_S = 10.0  # no live worker at all: the fleet may be starting with the client
_POLL_S = 0.25


class ServedCheck:
    """The job streams known to be served, and the check of the others."""

    def __init__(self, broker: ClientBroker, keys: Keys) -> None:
        self._broker = broker
        self._keys = keys
        self.known: set[str] = set()  # job streams with the workers' group

    async def check(
        self,
        model: str,
        version: str | None,
        stream: str,
        timeout: float,
    ) -> None:
        """Returns when the call may be sent; raises :class:`ModelNotServed` when no live
        worker serves it (after the grace, within ``timeout``). When Redis has answered this
        client before (asked when the check fails, since another call may have reached Redis
        meanwhile), an outage is left to the call's own retries."""
        try:
            await self._check(model, version, stream, timeout)
        except BrokerConnectionError:
            if not self._broker.reached:
                raise  # a wrong URL, or a server that is down: say so now
            # Redis was there and is not now: the call's own retries wait for it

    async def check_control(self, model: str, timeout: float) -> None:
        """As :meth:`check`, for load/unload: some live worker has the model in its folders."""
        try:
            await self._wait(model, timeout, lambda view: bool(view.having(model)), None)
        except BrokerConnectionError:
            if not self._broker.reached:
                raise

    async def _check(self, model: str, version: str | None, stream: str, timeout: float) -> None:
        group = await self._broker.has_group(stream)
        if group is None:  # the ACL does not let us tell
            return
        if group:  # served once: unless the live workers that have it failed to load it
            view = await self._broker.read_fleet()
            if view is not None and not view.serving(model) and not view.loading(model):
                _raise_if_failed(model, version, view)
            self.known.add(stream)
            return

        def served(view: FleetView) -> bool:
            if view.loading(model):
                return True  # its groups come once loaded; what is sent meanwhile waits
            if view.serving(model):
                # ready means its groups exist: this version's stream has none
                raise ModelNotServed(
                    model,
                    version,
                    f"no worker serves version {version!r} of model {model!r} "
                    f"(workers {_list(view.serving(model))} serve other versions of it)",
                )
            _raise_if_failed(model, version, view)
            return False

        await self._wait(model, timeout, served, stream, version)

    async def _wait(
        self,
        model: str,
        timeout: float,
        served: Callable[[FleetView], bool],
        stream: str | None,
        version: str | None = None,
    ) -> None:
        deadline = anyio.current_time() + timeout
        started = anyio.current_time()
        while True:
            view = await self._broker.read_fleet()
            if view is None:
                return
            # The group again, after the heartbeats: a worker creates its groups before it
            # says "ready", so a worker seen ready here has its group seen now.
            if stream is not None and await self._broker.has_group(stream):
                self.known.add(stream)
                return
            if served(view):
                return
            grace = GRACE_S if view.workers else EMPTY_FLEET_GRACE_S
            now = anyio.current_time()
            if now >= min(started + grace, deadline):
                raise ModelNotServed(model, version, _unknown(model, view))
            # Polling: a worker's first heartbeat rings no bell a client could wait on.
            await anyio.sleep(min(_POLL_S, max(min(started + grace, deadline) - now, 0)))


def _raise_if_failed(model: str, version: str | None, view: FleetView) -> None:
    failed = view.failed(model)
    if failed:
        raise ModelNotServed(
            model,
            version,
            f"model {model!r} is not served: its load() returned False on "
            f"{_list(failed)} (see the worker's log)",
        )


def _list(names: list[str]) -> str:
    return ", ".join(names)


def _unknown(model: str, view: FleetView) -> str:
    if not view.workers:
        return (
            f"no worker serves model {model!r}: no worker is running on this Redis "
            "and key prefix; start one (`conveyor worker MODEL_DIR`)"
        )
    served = view.ready()
    return (
        f"no worker serves model {model!r}; the models served are: "
        f"{_list(served) if served else 'none'}"
    )
