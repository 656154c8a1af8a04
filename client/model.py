"""``ParallelModel``: an ``MLModel`` whose methods run on the fleet.

As in MLServer's ``mlserver.parallel``, code written against a local model works unchanged:
``predict``, ``predict_stream``, ``metadata``, ``load``, ``unload`` and custom methods are
sent as jobs; ``decode``, ``decode_request``, ``encode`` and ``encode_response`` run
locally, using the input and output metadata the fleet reports (fetch it once with
``await model.metadata()``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from typing import Any, Protocol

from conveyor.broker.wire import Payload
from conveyor.errors import InferenceError
from conveyor.methods import ModelMethods
from conveyor.model import MLModel
from conveyor.settings import ModelParameters, ModelSettings
from conveyor.types import InferenceRequest, InferenceResponse, MetadataModelResponse

__all__ = ("Fleet", "ParallelModel")


class Fleet(Protocol):
    """What a :class:`ParallelModel` needs of its client (:class:`~conveyor.client.Client`)."""

    async def call(
        self,
        model: str,
        method: str,
        args: Sequence[Payload] = (),
        kwargs: Mapping[str, Payload] | None = None,
        *,
        version: str | None = None,
        timeout: float | None = None,
        wait_when_full: bool = False,
    ) -> Payload: ...

    def stream(
        self,
        model: str,
        requests: AsyncIterator[Payload],
        *,
        version: str | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[Payload, None]: ...

    async def control(self, model: str, method: str, *, timeout: float | None = None) -> bool: ...


class ParallelModel(MLModel):
    """A model served by the fleet. Get one with ``client.model(name, version)``."""

    def __init__(self, client: Fleet, name: str, version: str | None = None) -> None:
        settings = ModelSettings(
            name=name,
            implementation="conveyor.client.model.ParallelModel",
            parameters=ModelParameters(version=version) if version else None,
        )
        super().__init__(settings)
        self._client = client
        self._metadata: MetadataModelResponse | None = None
        self.ready = True

    def _expect(self, value: Payload, kind: type[Any], method: str) -> Any:
        if not isinstance(value, kind):
            raise InferenceError(
                f"model {self.name!r} answered {method} with {type(value).__name__}, "
                f"expected {kind.__name__}"
            )
        return value

    async def predict(
        self,
        payload: InferenceRequest,
        *,
        timeout: float | None = None,
        wait_when_full: bool = False,
    ) -> InferenceResponse:
        """Runs ``predict`` on a worker; waits at most ``timeout`` seconds.

        A full queue (the model's ``max_queue_length``) raises ``QueueFull``, or with
        ``wait_when_full`` waits for room within the timeout.
        """
        result = await self._client.call(
            self.name,
            ModelMethods.Predict.value,
            [payload],
            version=self.version,
            timeout=timeout,
            wait_when_full=wait_when_full,
        )
        response: InferenceResponse = self._expect(result, InferenceResponse, "predict")
        return response

    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest], *, timeout: float | None = None
    ) -> AsyncIterator[InferenceResponse]:
        """Streams ``payloads`` to a worker's ``predict_stream`` and yields its responses.

        Leaving early stops the job on the worker. On trio, wrap the iteration in
        ``contextlib.aclosing(...)`` so that happens at once rather than when the generator
        is garbage-collected.
        """
        chunks = self._client.stream(self.name, payloads, version=self.version, timeout=timeout)
        async with aclosing(chunks):
            async for chunk in chunks:
                yield self._expect(chunk, InferenceResponse, "predict_stream")

    async def metadata(self, *, timeout: float | None = None) -> MetadataModelResponse:
        """The model's metadata as a worker reports it; fetched once, then cached."""
        if self._metadata is None:
            result = await self._client.call(
                self.name, ModelMethods.Metadata.value, version=self.version, timeout=timeout
            )
            metadata: MetadataModelResponse = self._expect(
                result, MetadataModelResponse, "metadata"
            )
            self._metadata = metadata
            # decode/encode read content types from these, as on a worker
            self.inputs = list(metadata.inputs or [])
            self.outputs = list(metadata.outputs or [])
        return self._metadata

    async def load(self, *, timeout: float | None = None) -> bool:
        """Asks every live worker with this model in its folders to load it.

        Returns once one worker reports it ready; raises ``DeadlineExceeded`` at the timeout.
        """
        return await self._client.control(self.name, ModelMethods.Load.value, timeout=timeout)

    async def unload(self, *, timeout: float | None = None) -> bool:
        """Asks every live worker serving this model to unload it; returns once one did."""
        return await self._client.control(self.name, ModelMethods.Unload.value, timeout=timeout)

    async def call(
        self, method: str, *args: Payload, timeout: float | None = None, **kwargs: Payload
    ) -> Payload:
        """Calls a custom method the model marks with ``@custom_handler``."""
        return await self._client.call(
            self.name, method, args, kwargs, version=self.version, timeout=timeout
        )

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Payload]]:
        # Only reached for names the class does not define: custom methods of the model.
        if method.startswith("_"):
            raise AttributeError(method)

        async def remote(*args: Payload, **kwargs: Any) -> Payload:
            return await self.call(method, *args, **kwargs)

        return remote
