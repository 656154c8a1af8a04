"""gateway/rest/codec.py and custom.py: REST bodies <-> V2 types, without a server."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np
import orjson
import pytest

from conveyor.broker.fleet import _routes
from conveyor.gateway.errors import BadRequest
from conveyor.gateway.rest.codec import Outputs, decode_body, encode_response, parse_request
from conveyor.gateway.rest.custom import arguments
from conveyor.types import InferenceResponse, ResponseOutput
from conveyor.worker.heartbeat import rest_routes


def binary_body(document: dict[str, object], *raw: bytes) -> tuple[bytes, str]:
    header = json.dumps(document).encode()
    return header + b"".join(raw), str(len(header))


def test_binary_inputs_become_arrays_and_triton_parameters_are_taken_out() -> None:
    x = np.arange(4, dtype="<f4")
    names = struct.pack("<I", 2) + b"ab"
    body, length = binary_body(
        {
            "id": "r1",
            "parameters": {"binary_data_output": True, "timeout": 1_500_000, "mine": 1},
            "inputs": [
                {"name": "x", "shape": [2, 2], "datatype": "FP32",
                 "parameters": {"binary_data_size": 16}},
                {"name": "s", "shape": [1], "datatype": "BYTES",
                 "parameters": {"binary_data_size": 6, "content_type": "str"}},
                {"name": "j", "shape": [1], "datatype": "INT8", "data": [3]},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
        },
        x.tobytes(),
        names,
    )  # fmt: skip
    request, outputs, timeout = parse_request(body, length)
    assert timeout == 1.5
    assert request.parameters is not None
    assert request.parameters.model_extra == {"mine": 1}  # the model sees its own only
    data = request.inputs[0].data.root
    assert isinstance(data, np.ndarray)
    np.testing.assert_array_equal(data, x.reshape(2, 2))
    assert request.inputs[0].parameters is None
    assert request.inputs[1].data.root.tolist() == [b"ab"]
    assert request.inputs[1].parameters is not None
    assert request.inputs[1].parameters.content_type == "str"
    assert request.inputs[2].data.root == [3]  # JSON stays a list, as `conveyor infer` sends
    assert outputs.wants_binary("other")
    assert not outputs.wants_binary("y")
    assert request.outputs is not None
    assert request.outputs[0].parameters is None


@pytest.mark.parametrize(
    ("body", "length", "words"),
    [
        (b"{", None, "not valid JSON"),
        (b"[]", None, "must be a JSON object"),
        (b"{}", "9", "Inference-Header-Content-Length is '9', but the body has 2 bytes"),
        (b'{"parameters": {"timeout": "soon"}, "inputs": []}', None, "parameters.timeout"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}x', "74",
         "1 bytes after the inputs' binary data"),
    ],
)  # fmt: skip
def test_bodies_that_cannot_be_read_are_bad_requests(
    body: bytes, length: str | None, words: str
) -> None:
    with pytest.raises(BadRequest, match=words.replace("(", r"\(")):
        parse_request(body, length)


def test_compressed_bodies() -> None:
    assert decode_body(gzip.compress(b"{}"), "gzip") == b"{}"
    assert decode_body(zlib.compress(b"{}"), "deflate") == b"{}"
    with pytest.raises(BadRequest, match="not valid gzip"):
        decode_body(b"{}", "gzip")
    with pytest.raises(BadRequest, match="'br' is not supported"):
        decode_body(b"{}", "br")


def _response() -> InferenceResponse:
    return InferenceResponse(
        model_name="m",
        id="r1",
        outputs=[
            ResponseOutput(name="y", shape=[2], datatype="FP32", data=np.array([0.1, 2], "f4")),
            ResponseOutput(name="s", shape=[1], datatype="BYTES", data=["é"]),
        ],
    )


def test_json_outputs_read_as_pydantics_json() -> None:
    body, length = encode_response(_response(), Outputs())
    assert length is None
    # float32 digits as `conveyor infer` prints them (widened to float64), not orjson's own
    assert orjson.loads(body) == json.loads(_response().model_dump_json())


def test_binary_outputs_follow_the_json_header() -> None:
    body, length = encode_response(_response(), Outputs(binary=True, named={"s": False}))
    assert length is not None
    header = orjson.loads(body[:length])
    y, s = header["outputs"]
    assert y["parameters"] == {"binary_data_size": 8}
    assert "data" not in y
    assert s["data"] == ["é"]
    np.testing.assert_array_equal(np.frombuffer(body[length:], "<f4"), np.array([0.1, 2], "f4"))


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b'{"a": 1}', None, ([], {"a": 1})),
        (b'{"a": 1}', "application/x-www-form-urlencoded", ([], {"a": 1})),  # curl -d
        (b"[1, 2]", "application/json", ([[1, 2]], {})),
        (b"\x00\x01", None, ([b"\x00\x01"], {})),
        (b"plain words", "text/plain", ([b"plain words"], {})),
        (b"", None, ([], {"q": "1"})),
    ],
)
def test_what_a_custom_handler_receives(
    body: bytes, content_type: str | None, expected: object
) -> None:
    assert arguments(body, content_type, {"q": "1"}) == expected


def test_a_body_that_says_json_and_is_not_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="not valid JSON"):
        arguments(b"{", "application/json", {})


def test_rest_routes_travel_in_the_heartbeat() -> None:
    from conveyor import MLModel, custom_handler

    class Model(MLModel):
        @custom_handler(rest_path="/x/y", rest_method="get")
        async def look(self) -> int:
            return 1

        @custom_handler()  # no REST path: callable by name only
        async def hidden(self) -> int:
            return 2

    field = rest_routes([("m", Model.__new__(Model))])
    assert field == "m GET /x/y look"
    [route] = _routes(field.encode())
    assert (route.model, route.method, route.path, route.handler) == ("m", "GET", "/x/y", "look")
    assert _routes(None) == ()


def test_list_data_reads_as_pydantics_json_too() -> None:
    nested = [[1.5, float("nan")], [np.float32(0.1), 2]]
    texts = [b"\xff-bytes", "str", None]
    response = InferenceResponse(
        model_name="m",
        outputs=[
            ResponseOutput(name="n", shape=[2, 2], datatype="FP64", data=nested),
            ResponseOutput(name="t", shape=[3], datatype="BYTES", data=texts),
        ],
    )
    body, _ = encode_response(response, Outputs())
    assert orjson.loads(body) == json.loads(response.model_dump_json())
