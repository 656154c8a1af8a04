"""``MLModel``: the base class of a runtime, with MLServer's surface and behaviour.

A runtime written for MLServer runs here once its imports point at ``conveyor``. A method
may be ``async def`` (as here and in MLServer) or a plain ``def``, which the worker runs in
a thread.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.to_thread

from conveyor.codecs import (
    CodecNotFound,
    InputCodecLike,
    RequestCodecLike,
    decode_inference_request,
    decode_request_input,
    encode_inference_response,
    encode_response_output,
    get_decoded,
    has_decoded,
)
from conveyor.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    MetadataTensor,
    Parameters,
    RequestInput,
    RequestOutput,
    ResponseOutput,
)

if TYPE_CHECKING:
    # Annotations only: conveyor.settings imports this module (through conveyor.implementation)
    # to check that `implementation` names an MLModel.
    from conveyor.settings import ModelSettings

__all__ = ("MLModel",)


def _metadata_index(tensors: list[MetadataTensor] | None) -> dict[str, MetadataTensor]:
    return {tensor.name: tensor for tensor in tensors or ()}


class MLModel:
    """The base of every runtime: override ``load``, ``predict`` and maybe ``predict_stream``.

    ``self._settings`` and ``self.ready`` are public in practice, as in MLServer: runtimes
    read the first, and the worker sets the second to what ``load()`` returned.
    """

    def __init__(self, settings: ModelSettings) -> None:
        self._settings = settings
        self._inputs_index = _metadata_index(settings.inputs)
        self._outputs_index = _metadata_index(settings.outputs)
        self.ready = False

    async def load(self) -> bool:
        """Loads the model's artefacts; called once per worker before any request.

        Returns whether the model is ready. The default does nothing and returns ``True``.
        """
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """Runs inference on one request. Raises ``NotImplementedError`` unless overridden."""
        raise NotImplementedError("predict() method not implemented")

    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        """Streams responses back for a stream of requests.

        The default, as MLServer's, answers the first request with ``predict`` and ignores
        (does not read) the rest; with no request at all, it yields nothing.
        """
        # MLServer calls `payloads.__anext__()`, which fails with a RuntimeError on an empty
        # stream; `async for` + `return` behaves the same otherwise.
        async for payload in payloads:
            predict = self.predict
            if inspect.iscoroutinefunction(predict):
                yield await predict(payload)
            else:  # a plain `def predict` (Conveyor allows it): in a thread, as the worker does
                plain = cast("Callable[[InferenceRequest], InferenceResponse]", predict)
                yield await anyio.to_thread.run_sync(plain, payload)
            return

    async def unload(self) -> bool:
        """Frees the model's resources; returns whether it is now unloaded."""
        return True

    @property
    def name(self) -> str:
        """The model's name, from its settings."""
        return self._settings.name

    @property
    def version(self) -> str | None:
        """The model's version, from its settings' ``parameters.version``."""
        return self._settings.version

    @property
    def settings(self) -> ModelSettings:
        """The model's settings."""
        return self._settings

    @property
    def inputs(self) -> list[MetadataTensor] | None:
        """Metadata of the model's inputs; ``load()`` may set it, e.g. from the artefact."""
        return self._settings.inputs

    @inputs.setter
    def inputs(self, value: list[MetadataTensor]) -> None:
        self._settings.inputs = value
        self._inputs_index = _metadata_index(value)

    @property
    def outputs(self) -> list[MetadataTensor] | None:
        """Metadata of the model's outputs; ``load()`` may set it, e.g. from the artefact."""
        return self._settings.outputs

    @outputs.setter
    def outputs(self, value: list[MetadataTensor]) -> None:
        self._settings.outputs = value
        self._outputs_index = _metadata_index(value)

    # Decoded payloads are whatever the codec makes (arrays, data frames, lists of str...),
    # so the decode helpers return Any, as MLServer's do: runtimes use them without casts.

    def decode(
        self, request_input: RequestInput, default_codec: InputCodecLike | None = None
    ) -> Any:
        """Decodes one request input into a Python object.

        The codec comes from the input's content type, else the one in the model's input
        metadata; failing both, ``default_codec``; failing that, the raw ``data`` is returned.
        """
        decode_request_input(request_input, self._inputs_index)
        if has_decoded(request_input):
            return get_decoded(request_input)
        if default_codec is not None:
            return default_codec.decode_input(request_input)
        return request_input.data

    def decode_request(
        self, inference_request: InferenceRequest, default_codec: RequestCodecLike | None = None
    ) -> Any:
        """Decodes a whole request into a Python object.

        The codec comes from the request's content type, else the settings'
        ``parameters.content_type``; failing both, ``default_codec``; failing that, the
        request itself is returned (its inputs decoded in place where they say how).
        """
        decode_inference_request(inference_request, self._settings, self._inputs_index)
        if has_decoded(inference_request):
            return get_decoded(inference_request)
        if default_codec is not None:
            return default_codec.decode_request(inference_request)
        return inference_request

    def encode_response(
        self, payload: object, default_codec: RequestCodecLike | None = None
    ) -> InferenceResponse:
        """Encodes a Python object into a whole response of this model.

        The codec is the one that can encode the payload's type, else ``default_codec``.
        Raises ``CodecNotFound`` if neither can.
        """
        inference_response = encode_inference_response(payload, self._settings)
        if inference_response:
            return inference_response
        if default_codec is not None:
            return default_codec.encode_response(self.name, payload, self.version)
        raise CodecNotFound(payload_type=str(type(payload)), is_input=False, is_request=True)

    def encode(
        self,
        payload: object,
        request_output: RequestOutput,
        default_codec: InputCodecLike | None = None,
    ) -> ResponseOutput:
        """Encodes a Python object into one response output named as ``request_output``.

        The codec comes from the request output's content type, else the model's output
        metadata, else the payload's type; failing all, ``default_codec``.
        Raises ``CodecNotFound`` if none applies.
        """
        response_output = encode_response_output(payload, request_output, self._outputs_index)
        if response_output:
            return response_output
        if default_codec is not None:
            return default_codec.encode_output(request_output.name, payload)
        raise CodecNotFound(name=request_output.name, is_input=False, is_request=False)

    async def metadata(self) -> MetadataModelResponse:
        """The model's metadata, from its settings (name, platform, versions, tensors)."""
        model_metadata = MetadataModelResponse(
            name=self.name,
            platform=self._settings.platform,
            versions=self._settings.versions,
            inputs=self._settings.inputs,
            outputs=self._settings.outputs,
        )
        if self._settings.parameters:
            model_metadata.parameters = Parameters(
                content_type=self._settings.parameters.content_type
            )
        return model_metadata
