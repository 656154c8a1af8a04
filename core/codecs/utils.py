"""Choosing a codec for an input, output, request or response, and remembering what it decoded.

The content type that picks a codec comes, first to last, from:

1. the input's (output's) own ``parameters.content_type``;
2. the model's metadata for that input (output), i.e. ``model-settings.json``'s ``inputs``;
3. for the request as a whole, the request's ``parameters.content_type``, then the model
   settings' ``parameters.content_type``;
4. otherwise nothing is decoded here, and ``MLModel.decode(..., default_codec=...)`` applies its
   default codec, as in MLServer.

Decoded payloads are kept on the object's ``parameters`` under ``DecodedParameterName``; that
attribute is not a pydantic field, so it never reaches a dump or the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, TypeAlias, TypeVar

from conveyor.codecs.base import (
    InputCodecLike,
    RequestCodec,
    RequestCodecLike,
    find_input_codec,
    find_input_codec_by_payload,
    find_request_codec,
    find_request_codec_by_payload,
)
from conveyor.codecs.errors import CodecError
from conveyor.types import (
    Datatype,
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    Parameters,
    RequestInput,
    RequestOutput,
    ResponseOutput,
)

__all__ = (
    "Codec",
    "DecodedParameterName",
    "DefaultInputPrefix",
    "DefaultOutputPrefix",
    "InputOrOutput",
    "Parametrised",
    "SingleInputRequestCodec",
    "decode_inference_request",
    "decode_request_input",
    "encode_inference_response",
    "encode_response_output",
    "get_decoded",
    "get_decoded_or_raw",
    "has_decoded",
    "inject_batch_dimension",
)

DefaultOutputPrefix = "output-"
DefaultInputPrefix = "input-"
DecodedParameterName = "_decoded_payload"

InputOrOutput: TypeAlias = RequestInput | ResponseOutput
Codec: TypeAlias = InputCodecLike | RequestCodecLike
Parametrised: TypeAlias = (
    InferenceRequest | RequestInput | RequestOutput | ResponseOutput | InferenceResponse
)


class _ContentTyped(Protocol):
    @property
    def content_type(self) -> str | None: ...


class _Tagged(Protocol):
    """Something whose parameters may name a content type: ``MetadataTensor``, ``ModelSettings``."""

    @property
    def parameters(self) -> _ContentTyped | None: ...


class _Versioned(Protocol):
    @property
    def version(self) -> str | None: ...


class _NamedModel(Protocol):
    """What ``encode_inference_response`` reads from ``ModelSettings``."""

    @property
    def name(self) -> str: ...

    @property
    def parameters(self) -> _Versioned | None: ...


def inject_batch_dimension(shape: list[int]) -> list[int]:
    """Makes a 1-d shape ``[N]`` explicit as ``[N, 1]``; other shapes are returned unchanged.

    As in MLServer, a 0-d shape ``[]`` becomes ``[1]``.
    """
    if len(shape) > 1:
        return shape
    return [*shape, 1]


def _describe(input_or_output: InputOrOutput) -> str:
    kind = "input" if isinstance(input_or_output, RequestInput) else "output"
    return f"{kind} '{input_or_output.name}'"


def _require_bytes(input_or_output: InputOrOutput, content_type: str) -> None:
    if Datatype(input_or_output.datatype) is not Datatype.BYTES:
        raise CodecError(
            f"{_describe(input_or_output)} has datatype {input_or_output.datatype}, but content "
            f"type '{content_type}' decodes BYTES tensors only",
            name=input_or_output.name,
        )


def _get_content_type(parametrised: Parametrised, metadata: _Tagged | None = None) -> str | None:
    if parametrised.parameters and parametrised.parameters.content_type:
        return parametrised.parameters.content_type
    if metadata is not None and metadata.parameters and metadata.parameters.content_type:
        return metadata.parameters.content_type
    return None


def _save_decoded(parametrised: Parametrised, decoded_payload: object) -> None:
    if not parametrised.parameters:
        parametrised.parameters = Parameters()
    setattr(parametrised.parameters, DecodedParameterName, decoded_payload)


def encode_response_output(
    payload: object,
    request_output: RequestOutput,
    metadata_outputs: Mapping[str, MetadataTensor] | None = None,
) -> ResponseOutput | None:
    """Encodes ``payload`` as the requested output, or returns ``None`` if no codec fits.

    The codec is the output's content type, then the model metadata's for that output, then the
    first registered input codec that ``can_encode`` the payload.
    """
    metadata = (metadata_outputs or {}).get(request_output.name)
    content_type = _get_content_type(request_output, metadata)
    codec = find_input_codec(content_type) if content_type else find_input_codec_by_payload(payload)
    if codec is None:
        return None
    return codec.encode_output(name=request_output.name, payload=payload)


def encode_inference_response(
    payload: object, model_settings: _NamedModel
) -> InferenceResponse | None:
    """Encodes ``payload`` with the first request codec that can, or returns ``None``."""
    codec = find_request_codec_by_payload(payload)
    if codec is None:
        return None
    version = model_settings.parameters.version if model_settings.parameters else None
    return codec.encode_response(model_settings.name, payload, version)


def decode_request_input(
    request_input: RequestInput, metadata_inputs: Mapping[str, MetadataTensor] | None = None
) -> Any:
    """Decodes an input by its content type (its own, else the model metadata's).

    Returns ``None`` when there is no content type or no codec registered for it (a content type
    may be meant for a request codec, like ``pd_json``); otherwise the decoded payload is also
    saved on the input (see ``get_decoded``). Raises ``CodecError`` if the codec fails.
    """
    metadata = (metadata_inputs or {}).get(request_input.name)
    content_type = _get_content_type(request_input, metadata)
    if content_type is None:
        return None
    codec = find_input_codec(content_type)
    if codec is None:
        return None
    decoded = codec.decode_input(request_input)
    _save_decoded(request_input, decoded)
    return decoded


def decode_inference_request(
    inference_request: InferenceRequest,
    model_settings: _Tagged | None = None,
    metadata_inputs: Mapping[str, MetadataTensor] | None = None,
) -> Any:
    """Decodes every input that has a content type, then the request as a whole.

    Returns what the request codec (the request's content type, else the model settings') decoded,
    or the request itself when there is none. Raises ``CodecError`` if a codec fails.
    """
    for request_input in inference_request.inputs:
        decode_request_input(request_input, metadata_inputs)

    content_type = _get_content_type(inference_request, model_settings)
    if content_type is not None:
        codec = find_request_codec(content_type)
        if codec is not None:
            decoded = codec.decode_request(inference_request)
            _save_decoded(inference_request, decoded)
            return decoded
    return inference_request


def has_decoded(parametrised: Parametrised) -> bool:
    """Whether a codec already decoded this object (see ``decode_request_input``)."""
    return parametrised.parameters is not None and hasattr(
        parametrised.parameters, DecodedParameterName
    )


def get_decoded(parametrised: Parametrised) -> Any:
    """The payload a codec decoded from this object, or ``None``."""
    if has_decoded(parametrised):
        return getattr(parametrised.parameters, DecodedParameterName)
    return None


def get_decoded_or_raw(parametrised: Parametrised) -> Any:
    """The decoded payload; else a tensor's ``data`` (``TensorData``), else the object itself."""
    if has_decoded(parametrised):
        return get_decoded(parametrised)
    if isinstance(parametrised, RequestInput | ResponseOutput):
        return parametrised.data
    return parametrised


class SingleInputRequestCodec(RequestCodec):
    """A request codec that treats the request (response) as its one input (output).

    Subclasses set ``InputCodec``; e.g. ``NumpyRequestCodec`` decodes a single-tensor request
    straight into an array.
    """

    InputCodec: ClassVar[InputCodecLike | None] = None

    @classmethod
    def _input_codec(cls) -> InputCodecLike:
        if cls.InputCodec is None:
            raise NotImplementedError(f"{cls.__name__} has no InputCodec to delegate to")
        return cls.InputCodec

    @classmethod
    def can_encode(cls, payload: object) -> bool:
        return cls.InputCodec is not None and cls.InputCodec.can_encode(payload)

    @classmethod
    def encode_response(
        cls, model_name: str, payload: Any, model_version: str | None = None, **kwargs: Any
    ) -> InferenceResponse:
        output = cls._input_codec().encode_output(f"{DefaultOutputPrefix}1", payload, **kwargs)
        return InferenceResponse(
            model_name=model_name,
            model_version=model_version,
            parameters=Parameters(content_type=cls.ContentType),
            outputs=[output],
        )

    @classmethod
    def decode_response(cls, response: InferenceResponse) -> Any:
        if len(response.outputs) != 1:
            raise CodecError(
                f"The '{cls.ContentType}' codec only supports a single output tensor "
                f"({len(response.outputs)} were received)"
            )
        first = response.outputs[0]
        if not has_decoded(first) and cls.InputCodec is not None:
            _save_decoded(first, cls.InputCodec.decode_output(first))
        return get_decoded_or_raw(first)

    @classmethod
    def encode_request(cls, payload: Any, **kwargs: Any) -> InferenceRequest:
        request_input = cls._input_codec().encode_input(f"{DefaultInputPrefix}1", payload, **kwargs)
        return InferenceRequest(
            inputs=[request_input], parameters=Parameters(content_type=cls.ContentType)
        )

    @classmethod
    def decode_request(cls, request: InferenceRequest) -> Any:
        if len(request.inputs) != 1:
            raise CodecError(
                f"The '{cls.ContentType}' codec only supports a single input tensor "
                f"({len(request.inputs)} were received)"
            )
        first = request.inputs[0]
        if not has_decoded(first) and cls.InputCodec is not None:
            _save_decoded(first, cls.InputCodec.decode_input(first))
        return get_decoded_or_raw(first)


_Column = TypeVar("_Column", RequestInput, ResponseOutput)


def bytes_column(
    kind: type[_Column], name: str, data: list[bytes | str], content_type: str
) -> _Column:
    """A BYTES input or output of shape ``[N, 1]``, one element per row, as MLServer's
    string-like codecs (str, base64, datetime) build them."""
    return kind(
        name=name,
        datatype="BYTES",
        shape=[len(data), 1],
        data=data,
        parameters=Parameters(content_type=content_type),
    )
