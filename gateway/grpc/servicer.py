"""``inference.GRPCInferenceService`` answered through the fleet (:class:`FleetService`).

Each call's gRPC deadline becomes its job's timeout (or the request's ``timeout`` parameter,
in microseconds, when sooner; neither: the gateway's default); a call the client cancels
cancels its job (grpc.aio cancels the handler, and the client withdraws the job and stops it
on its worker). A failure ends the call with the status and message of ``gateway/errors.py``,
the table REST answers from too.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from conveyor.errors import InferenceError
from conveyor.gateway.errors import failure_of
from conveyor.gateway.grpc import convert
from conveyor.gateway.grpc import inference_pb2 as pb
from conveyor.gateway.grpc import inference_pb2_grpc as pb_grpc
from conveyor.gateway.service import FleetService
from conveyor.tracing import continued
from conveyor.types import InferenceRequest

if TYPE_CHECKING:
    from grpc.aio import ServicerContext

__all__ = ("InferenceServicer",)

logger = logging.getLogger(__name__)


# A job's timeout ends this much before its call's deadline (at most a tenth of the time
# left), so that the gateway's verdict (no worker took it: UNAVAILABLE; a worker ran out of
# time: DEADLINE_EXCEEDED) reaches the caller before its own deadline does.
_MARGIN_S = 0.05


def _timeout(
    context: ServicerContext[Any, Any], request: pb.ModelInferRequest | None = None
) -> float | None:
    """The job's timeout in seconds: the call's deadline, or the request's ``timeout``
    parameter, whichever comes first (None: neither, the gateway's default)."""
    remaining = context.time_remaining()
    if remaining is not None:
        remaining = max(remaining - min(_MARGIN_S, remaining / 10), 0.001)
    asked = None if request is None else convert.request_timeout(request)
    if asked is None or remaining is None:
        return asked if remaining is None else remaining
    return min(asked, remaining)


def _metadata(context: ServicerContext[Any, Any]) -> dict[str, str]:
    """The call's text metadata by name (gRPC names are lowercase), for its trace context."""
    return {
        key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)
    }


def _version(version: str) -> str | None:
    return version or None  # proto3's "" is "any version"


async def _fail(context: ServicerContext[Any, Any], exc: Exception) -> NoReturn:
    failure = failure_of(exc)
    if failure.grpc_code == "INTERNAL" and not isinstance(exc, InferenceError):
        # not the model's own failure (a RemoteError, which its worker logged): ours
        logger.warning("grpc.failed error=%r", exc, exc_info=exc)
    await context.abort(grpc.StatusCode[failure.grpc_code], failure.message)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The V2 gRPC service of one gateway process."""

    def __init__(self, service: FleetService) -> None:
        self._service = service

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: ServicerContext[Any, Any]
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=await self._service.live())

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: ServicerContext[Any, Any]
    ) -> pb.ServerReadyResponse:
        try:
            return pb.ServerReadyResponse(ready=await self._service.ready())
        except Exception as exc:
            await _fail(context, exc)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: ServicerContext[Any, Any]
    ) -> pb.ModelReadyResponse:
        try:
            ready = await self._service.model_ready(request.name, _version(request.version))
        except Exception as exc:
            await _fail(context, exc)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: ServicerContext[Any, Any]
    ) -> pb.ServerMetadataResponse:
        return convert.server_metadata(self._service.server_metadata())

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: ServicerContext[Any, Any]
    ) -> pb.ModelMetadataResponse:
        try:
            meta = await self._service.model_metadata(
                request.name, _version(request.version), timeout=_timeout(context)
            )
            return convert.model_metadata(meta)
        except Exception as exc:
            await _fail(context, exc)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        try:
            with continued(_metadata(context)):
                response = await self._service.infer(
                    request.model_name,
                    convert.infer_request(request),
                    _version(request.model_version),
                    timeout=_timeout(context, request),
                )
            return convert.infer_response(response, raw=bool(request.raw_input_contents))
        except Exception as exc:
            await _fail(context, exc)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """The client's requests feed one ``predict_stream`` (the model and version of the
        first); each response the model yields goes back as it comes."""
        try:
            first = await anext(aiter(request_iterator), None)
            if first is None:
                return  # the client closed its side without a request: nothing to run
            name, version = first.model_name, first.model_version
            raw = bool(first.raw_input_contents)
            requests = _requests(first, request_iterator)
            responses = self._service.infer_stream(
                name, requests, _version(version), timeout=_timeout(context, first)
            )
            # closed when this handler ends, however: that stops the job on its worker now;
            # run in the caller's trace, when its metadata carries one (this handler's task
            # runs every step of it, so the context holds across the yields)
            async with aclosing(responses):
                with continued(_metadata(context)):
                    async for response in responses:
                        yield pb.ModelStreamInferResponse(
                            infer_response=convert.infer_response(response, raw=raw)
                        )
        except Exception as exc:
            await _fail(context, exc)

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: ServicerContext[Any, Any]
    ) -> pb.RepositoryIndexResponse:
        try:
            # proto3 has no "unset": false means every model, as in Triton
            index = await self._service.index(ready=True if request.ready else None)
        except Exception as exc:
            await _fail(context, exc)
        return convert.repository_index(index)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: ServicerContext[Any, Any]
    ) -> pb.RepositoryModelLoadResponse:
        try:
            await self._service.load(request.model_name, timeout=_timeout(context))
        except Exception as exc:
            await _fail(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: ServicerContext[Any, Any]
    ) -> pb.RepositoryModelUnloadResponse:
        try:
            await self._service.unload(request.model_name, timeout=_timeout(context))
        except Exception as exc:
            await _fail(context, exc)
        return pb.RepositoryModelUnloadResponse()


async def _requests(
    first: pb.ModelInferRequest, rest: AsyncIterator[pb.ModelInferRequest]
) -> AsyncIterator[InferenceRequest]:
    """A stream's requests as V2 requests. A bad one ends the stream as a bad request (the
    client's input pump reports the error by its type name, which the error table knows)."""
    yield convert.infer_request(first)
    async for msg in rest:
        if (msg.model_name, msg.model_version) != (first.model_name, first.model_version):
            raise InferenceError(
                f"a stream goes to one model: its first request named "
                f"{first.model_name!r} (version {first.model_version!r}), a later one "
                f"{msg.model_name!r} (version {msg.model_version!r})"
            )
        yield convert.infer_request(msg)
