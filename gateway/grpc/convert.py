"""Protobuf messages of ``inference.proto`` <-> Conveyor's V2 types, both ways.

Tensors go through numpy: raw contents with :mod:`conveyor.gateway.tensors` (a fixed-size
tensor becomes a view over the message's bytes, and reaches the fleet as a raw field, never a
list); typed contents (``InferTensorContents``) are read into an array of the datatype's dtype.
A response answers in raw contents when its request came so (as Triton does), or when one of
its outputs has no typed field (FP16); else in typed contents.

A request that does not fit raises :class:`~conveyor.errors.InferenceError` (a bad request:
INVALID_ARGUMENT through ``gateway/errors.py``), naming the tensor and what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np
import numpy.typing as npt

from conveyor.errors import ConveyorError, InferenceError
from conveyor.gateway.grpc import inference_pb2 as pb
from conveyor.gateway.tensors import DTYPES, TensorError, from_raw, to_raw
from conveyor.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    MetadataServerResponse,
    MetadataTensor,
    Parameters,
    RepositoryIndexResponse,
    RequestInput,
    RequestOutput,
    ResponseOutput,
)

__all__ = (
    "infer_request",
    "infer_response",
    "model_metadata",
    "parameters_from",
    "put_parameters",
    "repository_index",
    "request_timeout",
    "server_metadata",
)

# Each datatype's field of InferTensorContents; FP16 has none (raw contents only).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_INT64 = (-(1 << 63), (1 << 63) - 1)
_TIMEOUT = "timeout"  # the request parameter the gateway acts on (the model never sees it)


def parameters_from(
    params: Mapping[str, pb.InferParameter], leave_out: str | None = None
) -> Parameters | None:
    """V2 parameters from a protobuf map (None when empty); a parameter with no value set,
    or named ``leave_out``, is left out."""
    values: dict[str, Any] = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is not None and key != leave_out:
            values[key] = getattr(param, choice)
    return Parameters(**values) if values else None


def request_timeout(msg: pb.ModelInferRequest) -> float | None:
    """The request's ``timeout`` parameter in seconds (None without one): microseconds, as
    Triton and tritonclient (``timeout=``) spell it, and as the REST side reads it."""
    param = msg.parameters.get(_TIMEOUT)
    choice = None if param is None else param.WhichOneof("parameter_choice")
    if param is None or choice is None:
        return None
    value = getattr(param, choice)
    if choice not in ("int64_param", "uint64_param", "double_param") or not value > 0:
        raise InferenceError(f"parameters.timeout is {value!r}: a number of microseconds above 0")
    return float(value) / 1e6


def put_parameters(
    params: Parameters | None, target: MutableMapping[str, pb.InferParameter]
) -> None:
    """Writes V2 parameters into a protobuf map. Values a parameter cannot hold (lists,
    dicts: e.g. MLServer's REST ``headers``) are left out, as MLServer's gRPC server does."""
    if params is None:
        return
    for key, value in params.model_dump().items():
        if isinstance(value, np.generic):
            value = value.item()
        param = pb.InferParameter()
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int) and _INT64[0] <= value <= _INT64[1]:
            param.int64_param = value
        elif isinstance(value, int) and 0 <= value < 1 << 64:
            param.uint64_param = value
        elif isinstance(value, float):
            param.double_param = value
        elif isinstance(value, str):
            param.string_param = value
        elif isinstance(value, bytes):
            param.string_param = value.decode("utf-8", errors="replace")
        else:
            continue
        target[key].CopyFrom(param)


def infer_request(msg: pb.ModelInferRequest) -> InferenceRequest:
    """The V2 request a ``ModelInferRequest`` carries (the model's name and version stay
    with the caller)."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InferenceError(
            f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs: send "
            "every input's data there, in the order of `inputs`, or none"
        )
    inputs = []
    for idx, tensor in enumerate(msg.inputs):
        shape = list(tensor.shape)
        data = _raw_input(tensor, shape, raw[idx]) if raw else _typed_input(tensor, shape)
        inputs.append(
            RequestInput(
                name=tensor.name,
                shape=shape,
                datatype=tensor.datatype,
                parameters=parameters_from(tensor.parameters),
                data=data,
            )
        )
    outputs = [
        RequestOutput(name=out.name, parameters=parameters_from(out.parameters))
        for out in msg.outputs
    ]
    return InferenceRequest(
        id=msg.id or None,
        parameters=parameters_from(msg.parameters, leave_out=_TIMEOUT),
        inputs=inputs,
        outputs=outputs or None,
    )


def _raw_input(
    tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int], raw: bytes
) -> npt.NDArray[Any]:
    if tensor.HasField("contents"):
        raise InferenceError(
            f"input {tensor.name!r} has both typed contents and raw_input_contents: send one"
        )
    try:
        return from_raw(tensor.name, tensor.datatype, shape, raw)
    except TensorError as exc:
        raise InferenceError(str(exc)) from exc


def _typed_input(
    tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int]
) -> npt.NDArray[Any]:
    name, datatype = tensor.name, tensor.datatype
    field = _CONTENTS.get(datatype)
    if field is None:
        known = ", ".join(_CONTENTS)
        where = "raw_input_contents" if datatype in DTYPES else f"one of {known}"
        raise InferenceError(
            f"input {name!r} has datatype {datatype!r}, which has no typed contents: "
            f"send it in {where}"
        )
    if any(dim < 0 for dim in shape):
        raise InferenceError(f"input {name!r} has shape {shape}: dimensions must be >= 0")
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InferenceError(
            f"input {name!r} ({datatype}, shape {shape}) needs {count} element(s) in "
            f"contents.{field}, but {len(values)} came"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        return np.array(values, dtype=DTYPES[datatype]).reshape(shape)
    except (OverflowError, ValueError) as exc:  # e.g. 300 in an INT8 tensor's int_contents
        raise InferenceError(
            f"input {name!r} has contents that do not fit {datatype}: {exc}"
        ) from exc


def infer_response(response: InferenceResponse, *, raw: bool) -> pb.ModelInferResponse:
    """The ``ModelInferResponse`` of a V2 response: raw contents when ``raw`` (or when an
    output has no typed field), else typed contents. An output whose data does not fit its
    datatype or shape raises :class:`~conveyor.errors.ConveyorError` (the model's fault,
    not the caller's: INTERNAL)."""
    msg = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version or "",
        id=response.id or "",
    )
    put_parameters(response.parameters, msg.parameters)
    raw = raw or any(out.datatype not in _CONTENTS for out in response.outputs)
    for out in response.outputs:
        tensor = msg.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        put_parameters(out.parameters, tensor.parameters)
        if raw:
            msg.raw_output_contents.append(_output_bytes(out))
        else:
            elements = from_raw(out.name, out.datatype, out.shape, _output_bytes(out))
            getattr(tensor.contents, _CONTENTS[out.datatype]).extend(elements.ravel().tolist())
    return msg


def _output_bytes(out: ResponseOutput) -> bytes:
    try:
        return to_raw(out.name, out.datatype, out.shape, out.data.root)
    except TensorError as exc:  # a bad request's error: this one is the model's
        raise ConveyorError(f"the model answered an output the gateway cannot send: {exc}") from exc


def server_metadata(meta: MetadataServerResponse) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(
        name=meta.name, version=meta.version, extensions=meta.extensions
    )


def model_metadata(meta: MetadataModelResponse) -> pb.ModelMetadataResponse:
    msg = pb.ModelMetadataResponse(
        name=meta.name, versions=meta.versions or [], platform=meta.platform
    )
    put_parameters(meta.parameters, msg.parameters)
    for tensors, target in ((meta.inputs, msg.inputs), (meta.outputs, msg.outputs)):
        for tensor in tensors or []:
            _put_tensor_metadata(tensor, target.add())
    return msg


def _put_tensor_metadata(
    tensor: MetadataTensor, target: pb.ModelMetadataResponse.TensorMetadata
) -> None:
    target.name = tensor.name
    target.datatype = tensor.datatype
    target.shape.extend(tensor.shape)
    put_parameters(tensor.parameters, target.parameters)


def repository_index(index: RepositoryIndexResponse) -> pb.RepositoryIndexResponse:
    msg = pb.RepositoryIndexResponse()
    for item in index.root:
        msg.models.add(
            name=item.name, version=item.version or "", state=item.state, reason=item.reason
        )
    return msg
