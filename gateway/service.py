"""What the gateway asks of the fleet, whatever the transport: one :class:`FleetService` per
gateway process, over one :class:`~conveyor.client.Client` (many calls in flight on a few
connections).

REST and gRPC both speak through it, so the two answer alike. It knows V2 types, not HTTP
or protobuf; failures leave it as Conveyor's exceptions, which ``gateway/errors.py`` turns
into statuses.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING

from conveyor import __version__
from conveyor.client import Client
from conveyor.errors import ModelNotFound
from conveyor.methods import ModelMethods
from conveyor.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    MetadataServerResponse,
    RepositoryIndexResponse,
    RepositoryIndexResponseItem,
    State,
)

if TYPE_CHECKING:
    # what a custom handler takes and answers: the wire's msgpack-able values
    from conveyor.broker import RestRoute
    from conveyor.broker.wire import Payload

__all__ = ("EXTENSIONS", "SERVER_NAME", "FleetService")

SERVER_NAME = "conveyor"
# the V2 extensions the gateway serves (the server metadata lists them)
EXTENSIONS = ("model_repository", "binary_tensor_data")
ROUTES_MAX_AGE_S = 1.0  # a worker's new REST path is routed within this long


class FleetService:
    """The fleet as the V2 protocol sees it: health, metadata, inference, the repository."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._routes: dict[tuple[str, str], RestRoute] = {}
        self._routes_read = float("-inf")

    async def live(self) -> bool:
        return True  # the process answers: that is all liveness means

    async def ready(self) -> bool:
        """Ready when Redis answers: the gateway can take calls (workers may come later)."""
        return await self.client.ping()

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        """Ready when a live worker serves the model (and the version, when given)."""
        return await self.client.serves(name, version)

    def server_metadata(self) -> MetadataServerResponse:
        return MetadataServerResponse(
            name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS)
        )

    async def model_metadata(
        self, name: str, version: str | None = None, *, timeout: float | None = None
    ) -> MetadataModelResponse:
        """The model's metadata, as a worker serving it reports it (asked each time: a
        reload may change it)."""
        answer = await self.client.call(
            name, ModelMethods.Metadata.value, version=version, timeout=timeout
        )
        if not isinstance(answer, MetadataModelResponse):
            raise TypeError(f"model {name!r} answered metadata with {type(answer).__name__}")
        return answer

    async def infer(
        self,
        name: str,
        request: InferenceRequest,
        version: str | None = None,
        *,
        timeout: float | None = None,
    ) -> InferenceResponse:
        """``predict`` on some worker; the response carries the request's id."""
        # client.call itself, not client.model(...).predict: a ParallelModel per request
        # builds its ModelSettings each time (~5% of the gateway's CPU under load)
        answer = await self.client.call(
            name, ModelMethods.Predict.value, [request], version=version, timeout=timeout
        )
        if not isinstance(answer, InferenceResponse):
            raise TypeError(f"model {name!r} answered predict with {type(answer).__name__}")
        return answer

    async def infer_stream(
        self,
        name: str,
        requests: AsyncIterator[InferenceRequest],
        version: str | None = None,
        *,
        timeout: float | None = None,
    ) -> AsyncGenerator[InferenceResponse, None]:
        """``predict_stream`` on some worker: requests go as they come, each response comes
        as the model yields it. Leaving the iteration early stops the job on the worker."""
        async for response in self.client.model(name, version).predict_stream(
            requests, timeout=timeout
        ):
            yield response

    async def call_handler(
        self,
        name: str,
        method: str,
        args: Sequence[Payload] = (),
        kwargs: Mapping[str, Payload] | None = None,
        *,
        timeout: float | None = None,
    ) -> Payload:
        """A custom handler of the model, given these arguments (REST custom routes)."""
        return await self.client.call(name, method, args, kwargs, timeout=timeout)

    async def route(self, method: str, path: str) -> RestRoute | None:
        """The custom handler a served model has at ``method path`` (its ``custom_handler``'s
        ``rest_path``), as the workers' heartbeats say; read again once a second at most."""
        now = time.monotonic()
        if now - self._routes_read > ROUTES_MAX_AGE_S:
            view = await self.client.fleet()
            self._routes = view.routes() if view is not None else {}
            self._routes_read = now
        return self._routes.get((method, path))

    async def index(self, ready: bool | None = None) -> RepositoryIndexResponse:
        """Every model some live worker has in its folders, with its state across the
        fleet: READY when one serves it, LOADING when one is loading it, else UNAVAILABLE
        (with the reason). ``ready`` keeps only the models whose readiness is that."""
        view = await self.client.fleet()
        if view is None:  # the ACL does not let the gateway read the heartbeats
            return RepositoryIndexResponse([])
        items = []
        for name in sorted({name for w in view.workers for name in w.models}):
            if view.serving(name):
                state, reason = State.READY, ""
            elif view.loading(name):
                state, reason = State.LOADING, ""
            elif view.failed(name):
                state, reason = State.UNAVAILABLE, "its load() returned False"
            else:
                state, reason = State.UNAVAILABLE, "not loaded"
            if ready is None or (state == State.READY) == ready:
                items.append(RepositoryIndexResponseItem(name=name, state=state, reason=reason))
        return RepositoryIndexResponse(items)

    async def load(self, name: str, *, timeout: float | None = None) -> None:
        """Loads the model on every live worker that has it; raises :class:`ModelNotFound`
        when none could."""
        if not await self.client.model(name).load(timeout=timeout):
            raise ModelNotFound(name)

    async def unload(self, name: str, *, timeout: float | None = None) -> None:
        """Unloads the model on every live worker serving it."""
        await self.client.model(name).unload(timeout=timeout)
