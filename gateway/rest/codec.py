"""V2 REST bodies <-> V2 types: MLServer's JSON, and Triton's binary tensor extension.

A request body is JSON (any Content-Type, or none: ``tritonclient.http.aio`` sends none), or,
with an ``Inference-Header-Content-Length: N`` header, N bytes of JSON followed by the raw bytes
of each input whose parameters say ``binary_data_size`` (in input order). Those inputs become
numpy arrays (``gateway/tensors.py``): they travel to the fleet as raw fields, never as lists.
JSON ``data`` lists stay lists, as ``conveyor infer`` sends them.

Outputs go back as JSON unless asked for binary: ``"parameters": {"binary_data": true}`` on a
requested output, or ``"binary_data_output": true`` in the request's parameters for all outputs
(what tritonclient sends when it names no outputs). The response is then the JSON header, each
binary output's bytes after it, and ``Inference-Header-Content-Length``.

The request parameters the gateway acts on (``binary_data_output``, and ``timeout``: the
call's deadline in microseconds, as tritonclient and Triton spell it) and the inputs'
``binary_data_size`` are taken out before the model sees the request.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from conveyor.errors import PayloadTooLarge
from conveyor.gateway.errors import BadRequest
from conveyor.gateway.tensors import from_raw, to_raw
from conveyor.types import InferenceRequest, InferenceResponse, TensorData

__all__ = (
    "HEADER_LENGTH",
    "Outputs",
    "decode_body",
    "dump_json",
    "encode_response",
    "parse_request",
    "read_json",
)

HEADER_LENGTH = "inference-header-content-length"
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # deflate: zlib's format
_MAX_TIMEOUT_US = 24 * 3600 * 1_000_000  # a day: anything longer is a mistake in units


@dataclass(slots=True)
class Outputs:
    """How the client wants each output: binary or JSON, by name, and for the rest."""

    binary: bool = False  # outputs not named below
    named: dict[str, bool] = field(default_factory=dict)

    def wants_binary(self, name: str) -> bool:
        return self.named.get(name, self.binary)


def decode_body(body: bytes, content_encoding: str | None, limit: int | None = None) -> bytes:
    """The body, decompressed when the client says it compressed it (tritonclient can); at
    most ``limit`` bytes once decompressed (a small bomb must not become a large body)."""
    if not content_encoding or content_encoding == "identity":
        return body
    if content_encoding not in _WBITS:
        raise BadRequest(f"Content-Encoding {content_encoding!r} is not supported: gzip or deflate")
    inflater = zlib.decompressobj(wbits=_WBITS[content_encoding])
    try:
        plain = inflater.decompress(body, 0 if limit is None else limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"the body is not valid {content_encoding} data: {exc}") from exc
    if limit is not None and len(plain) > limit:
        raise PayloadTooLarge(
            len(plain),
            limit,
            f"the request body is over the limit of {limit} bytes once decompressed "
            "(--max-request-bytes)",
        )
    if not inflater.eof:
        raise BadRequest(f"the body is not valid {content_encoding} data: it is truncated")
    return plain


def read_json(body: bytes | memoryview, what: str = "request body") -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the {what} is not valid JSON: {exc}") from exc


def _header_length(value: str, size: int) -> int:
    try:
        length = int(value)
    except ValueError:
        length = -1
    if not 0 <= length <= size:
        raise BadRequest(
            f"Inference-Header-Content-Length is {value!r}, but the body has {size} bytes"
        )
    return length


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _pop_parameter(holder: dict[str, Any], name: str) -> object:
    """Takes ``name`` out of ``holder["parameters"]`` (dropping the map if that empties it)."""
    parameters = holder.get("parameters")
    if not isinstance(parameters, dict) or name not in parameters:
        return None
    value = parameters.pop(name)
    if not parameters:
        del holder["parameters"]
    return value


def _binary_inputs(document: dict[str, Any], raw: memoryview) -> None:
    """Puts each binary input's array in its ``data``, in place."""
    offset = 0
    inputs = document.get("inputs")
    for index, item in enumerate(inputs if isinstance(inputs, list) else ()):
        item = _object(item, f"inputs[{index}]")
        size = _pop_parameter(item, "binary_data_size")
        if size is None:
            continue
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if type(size) is not int or size < 0 or offset + size > len(raw):
            raise BadRequest(
                f"input {name!r} has binary_data_size {size!r}, but {len(raw) - offset} bytes "
                "of binary data remain"
            )
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise BadRequest(f"inputs[{index}] needs a name and a datatype (strings)")
        if not isinstance(shape, list):
            raise BadRequest(f"input {name!r} needs a shape (a list of ints)")
        item["data"] = from_raw(name, datatype, shape, raw[offset : offset + size])
        offset += size
    if offset != len(raw):
        raise BadRequest(
            f"the body has {len(raw) - offset} bytes after the inputs' binary data "
            "(their binary_data_size add up to less)"
        )


def _outputs(document: dict[str, Any]) -> Outputs:
    binary = _pop_parameter(document, "binary_data_output")
    outputs = Outputs(binary=binary is True)
    requested = document.get("outputs")
    for index, item in enumerate(requested if isinstance(requested, list) else ()):
        item = _object(item, f"outputs[{index}]")
        wanted = _pop_parameter(item, "binary_data")
        if wanted is not None and isinstance(item.get("name"), str):
            outputs.named[item["name"]] = wanted is True
    return outputs


def _timeout(document: dict[str, Any]) -> float | None:
    value = _pop_parameter(document, "timeout")
    if value is None:
        return None
    if type(value) not in (int, float) or not 0 < value <= _MAX_TIMEOUT_US:  # type: ignore[operator]
        raise BadRequest(
            f"parameters.timeout is {value!r}: a number of microseconds, above 0 "
            f"and at most {_MAX_TIMEOUT_US}"
        )
    return float(value) / 1e6  # type: ignore[arg-type]


def parse_request(
    body: bytes, header_length: str | None
) -> tuple[InferenceRequest, Outputs, float | None]:
    """The inference request a REST body holds, how its outputs should go back, and the
    client's timeout in seconds (None: the gateway's default)."""
    if header_length is None:
        document = _object(read_json(body), "the request body")
    else:
        length = _header_length(header_length, len(body))
        view = memoryview(body)
        document = _object(read_json(view[:length], "JSON header"), "the JSON header")
        _binary_inputs(document, view[length:])
    outputs = _outputs(document)
    timeout = _timeout(document)
    # pydantic's errors become 400s (gateway/errors.py)
    return InferenceRequest.model_validate(document), outputs, timeout


def _json_data(data: object) -> object:
    """A tensor's ``data`` as JSON wants it: flat, numbers of float32/16 widened to float64
    (their digits then read as ``conveyor infer`` prints them); large numeric arrays are left
    to orjson's numpy support, not turned into Python lists."""
    if isinstance(data, np.ndarray) and data.dtype.kind in "biuf":
        if data.dtype.kind == "f" and data.dtype.itemsize < 8:
            return data.astype(np.float64).ravel()
        flat = data.ravel()
        return flat if flat.dtype.isnative else flat.astype(flat.dtype.newbyteorder("="))
    if isinstance(data, list):
        # as pydantic writes it: numpy scalars (and bytes) through _default, so without
        # orjson's numpy option (which would write a float32's shortest digits)
        return orjson.Fragment(orjson.dumps(data, default=_default))
    return TensorData(data).model_dump(mode="json")


def _default(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        data = _json_data(value)
        return data.tolist() if isinstance(data, np.ndarray) else data
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dump_json(value: object) -> bytes:
    return orjson.dumps(value, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_response(response: InferenceResponse, outputs: Outputs) -> tuple[bytes, int | None]:
    """The body of an inference response, and its JSON header's length when binary outputs
    follow it (for ``Inference-Header-Content-Length``)."""
    document = response.model_dump()
    raw: list[bytes] = []
    for item, output in zip(document.get("outputs", ()), response.outputs, strict=True):
        if outputs.wants_binary(output.name):
            data = to_raw(output.name, str(output.datatype), output.shape, output.data.root)
            item.pop("data", None)
            parameters = item.setdefault("parameters", {})
            parameters["binary_data_size"] = len(data)
            raw.append(data)
        else:
            item["data"] = _json_data(output.data.root)
    header = dump_json(document)
    if not raw:
        return header, None
    return b"".join([header, *raw]), len(header)
