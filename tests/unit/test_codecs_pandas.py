"""PandasCodec: MLServer's behaviour, with numeric columns sent as numpy arrays."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conveyor.codecs import CodecError, StringCodec, decode_inference_request
from conveyor.codecs.numpy import convert_nan
from conveyor.codecs.pandas import PandasCodec, _to_response_output
from conveyor.types import (
    Datatype,
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    ResponseOutput,
)

STR = Parameters(content_type=StringCodec.ContentType)
JSON = Parameters(content_type=PandasCodec.JsonContentType)


def _plain(tensor: RequestInput | ResponseOutput) -> dict[str, Any]:
    """The tensor as a dict, its data as a list (NaN as None), for comparisons."""
    dumped = tensor.model_dump()
    root = tensor.data.root
    data = root.tolist() if isinstance(root, np.ndarray) else root
    dumped["data"] = [convert_nan(elem) for elem in data]
    return dumped


def _out(name: str, shape: list[int], datatype: str, data: list[Any], **kw: Any) -> ResponseOutput:
    return ResponseOutput(name=name, shape=shape, datatype=datatype, data=data, **kw)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(pd.DataFrame({"a": [1, 2, 3], "b": ["A", "B", "C"]}), True), ({"a": [1, 2, 3]}, False)],
)
def test_can_encode(payload: object, expected: bool) -> None:
    assert PandasCodec.can_encode(payload) == expected


@pytest.mark.parametrize(
    ("series", "use_bytes", "expected"),
    [
        (
            pd.Series(data=[b"hey", b"abc"], name="foo"),
            True,
            _out("foo", [2, 1], "BYTES", [b"hey", b"abc"], parameters=STR),
        ),
        (
            pd.Series(data=[b"hey", b"abc"], name="foo"),
            False,
            _out("foo", [2, 1], "BYTES", [b"hey", b"abc"], parameters=STR),
        ),
        (
            pd.Series(data=["hey", "abc"], name="foo"),
            True,
            _out("foo", [2, 1], "BYTES", [b"hey", b"abc"], parameters=STR),
        ),
        (
            pd.Series(data=["hey", "abc"], name="foo"),
            False,
            _out("foo", [2, 1], "BYTES", ["hey", "abc"], parameters=STR),
        ),
        (pd.Series(data=[1, 2, 3], name="bar"), True, _out("bar", [3, 1], "INT64", [1, 2, 3])),
        (
            pd.Series(data=[1, 2.5, 3], name="bar"),
            True,
            _out("bar", [3, 1], "FP64", [1.0, 2.5, 3.0]),
        ),
        (
            pd.Series(data=[4, np.nan, 6], name="bar"),
            True,
            _out("bar", [3, 1], "FP64", [4, None, 6]),
        ),
        (
            pd.Series(data=[1, 2], name="bar", dtype="Int64"),
            True,
            _out("bar", [2, 1], "INT64", [1, 2]),
        ),
        (
            pd.Series(data=[[1, 2], [3, 4, 5]], name="bar"),
            True,
            _out("bar", [2, 1], "BYTES", [b"[1,2]", b"[3,4,5]"], parameters=JSON),
        ),
        (
            pd.Series(data=[{"a": 1}, {"b": 2, "c": 3}], name="bar"),
            True,
            _out("bar", [2, 1], "BYTES", [b'{"a":1}', b'{"b":2,"c":3}'], parameters=JSON),
        ),
        (
            pd.Series(data=["a", "b", {"a": 1}], name="bar"),
            True,
            _out("bar", [3, 1], "BYTES", [b'"a"', b'"b"', b'{"a":1}'], parameters=JSON),
        ),
        (
            pd.Series(data=[np.array([1, 2]), np.array([3, 4, 5])], name="bar"),
            True,
            _out("bar", [2, 1], "BYTES", [b"[1,2]", b"[3,4,5]"], parameters=JSON),
        ),
        (
            pd.Series(data=["a", None], name="bar"),
            False,
            _out("bar", [2, 1], "BYTES", ['"a"', "null"], parameters=JSON),
        ),
    ],
)
def test_to_response_output(
    series: pd.Series[Any], use_bytes: bool, expected: ResponseOutput
) -> None:
    assert _plain(_to_response_output(series, use_bytes=use_bytes)) == _plain(expected)


def test_numeric_columns_are_sent_as_arrays() -> None:
    frame = pd.DataFrame({"a": np.arange(1000, dtype=np.float32), "b": np.arange(1000)})
    outputs = PandasCodec.encode_outputs(frame)
    for output, column in zip(outputs, ("a", "b"), strict=True):
        assert isinstance(output.data.root, np.ndarray)
        assert np.shares_memory(output.data.root, frame[column].to_numpy())
    assert [Datatype(o.datatype).value for o in outputs] == ["FP32", "INT64"]


FRAME = pd.DataFrame({"a": [1, 2, 3], "b": ["A", "B", "C"]})


@pytest.mark.parametrize(
    ("use_bytes", "b_data"), [(True, [b"A", b"B", b"C"]), (False, ["A", "B", "C"])]
)
def test_encode_response_and_request(use_bytes: bool, b_data: list[Any]) -> None:
    expected = [
        _out("a", [3, 1], "INT64", [1, 2, 3]),
        _out("b", [3, 1], "BYTES", b_data, parameters=STR),
    ]
    response = PandasCodec.encode_response("my-model", FRAME, use_bytes=use_bytes)
    assert (response.model_name, response.parameters) == ("my-model", Parameters(content_type="pd"))
    assert [_plain(o) for o in response.outputs] == [_plain(o) for o in expected]

    request = PandasCodec.encode_request(FRAME, use_bytes=use_bytes)
    assert request.parameters == Parameters(content_type="pd")
    assert all(isinstance(i, RequestInput) for i in request.inputs)
    assert [_plain(i) for i in request.inputs] == [_plain(o) for o in expected]


def test_encode_nan_column() -> None:
    response = PandasCodec.encode_response("m", pd.DataFrame({"a": [1, np.nan, 3]}))
    assert response.outputs[0].model_dump(mode="json")["data"] == [1.0, None, 3.0]


JSON_FRAME = pd.DataFrame(
    {
        "a": [[1], [1, 2]],
        "b": [{"a": 1}, {"a": 1, "b": 2}],
        "c": [[1, 2], [1, 2, 3]],
        "d": ["a", {"a": 1}],
        "e": [{"a": 1, "b": {"c": 2}}, {"d": 3, "e": {"f": 4, "g": 5}}],
    }
)
JSON_INPUTS = [
    RequestInput(name="a", shape=[2, 1], datatype="BYTES", data=["[1]", "[1,2]"], parameters=JSON),
    RequestInput(
        name="b", shape=[2, 1], datatype="BYTES", data=['{"a":1}', '{"a":1,"b":2}'], parameters=JSON
    ),
    RequestInput(
        name="c", shape=[2, 1], datatype="BYTES", data=["[1,2]", "[1,2,3]"], parameters=JSON
    ),
    RequestInput(
        name="d", shape=[2, 1], datatype="BYTES", data=['"a"', '{"a":1}'], parameters=JSON
    ),
    RequestInput(
        name="e",
        shape=[2, 1],
        datatype="BYTES",
        data=['{"a":1,"b":{"c":2}}', '{"d":3,"e":{"f":4,"g":5}}'],
        parameters=JSON,
    ),
]


def test_json_columns() -> None:
    request = PandasCodec.encode_request(JSON_FRAME, use_bytes=False)
    assert [_plain(i) for i in request.inputs] == [_plain(i) for i in JSON_INPUTS]
    decoded = PandasCodec.decode_request(InferenceRequest(inputs=JSON_INPUTS))
    pd.testing.assert_frame_equal(decoded, JSON_FRAME)


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        (
            [
                RequestInput(
                    name="a",
                    data=[[1, 2, 3]],
                    datatype="BYTES",
                    shape=[1, 1],
                    parameters=Parameters(_decoded_payload=[[1, 2, 3]]),
                ),
                RequestInput(
                    name="b",
                    data=b"hello world",
                    datatype="BYTES",
                    shape=[1, 1],
                    parameters=Parameters(_decoded_payload=["hello world"]),
                ),
            ],
            pd.DataFrame({"a": [[1, 2, 3]], "b": ["hello world"]}),
        ),
        (
            [
                RequestInput(
                    name="a",
                    data=[1, 2, 3],
                    datatype="INT64",
                    shape=[3, 1],
                    parameters=Parameters(_decoded_payload=np.array([[1], [2], [3]])),
                ),
                RequestInput(name="b", data=[b"A", b"B", b"C"], datatype="BYTES", shape=[3, 1]),
            ],
            pd.DataFrame({"a": [1, 2, 3], "b": [b"A", b"B", b"C"]}),
        ),
        (
            [
                RequestInput(
                    name="a",
                    data=[1],
                    datatype="INT32",
                    shape=[1],
                    parameters=Parameters(_decoded_payload=np.array([1])),
                ),
            ],
            pd.DataFrame({"a": np.array([1], dtype=np.int32)}),
        ),
        (
            [
                RequestInput(name="a", data=[None, None], datatype="FP64", shape=[2, 1]),
                RequestInput(name="b", data=[1, 2], datatype="FP32", shape=[2, 1]),
                RequestInput(name="c", data=np.array([3, 4]), datatype="INT32", shape=[2, 1]),
                RequestInput(name="d", data=[5, 6], datatype="UINT8", shape=[2, 1]),
                RequestInput(name="e", data=[True, False], datatype="BOOL", shape=[2, 1]),
                RequestInput(name="f", data=[0, 1], datatype="BOOL", shape=[2, 1]),
                RequestInput(name="g", data=[1.0, 2.0, 3.0, 4.0], datatype="FP16", shape=[2, 2]),
            ],
            pd.DataFrame(
                {
                    "a": [np.nan, np.nan],
                    "b": np.array([1.0, 2.0], dtype=np.float32),
                    "c": np.array([3, 4], dtype=np.int32),
                    "d": np.array([5, 6], dtype=np.uint8),
                    "e": [True, False],
                    "f": [False, True],
                    "g": pd.Series(list(np.array([[1, 2], [3, 4]], dtype=np.float16))),
                }
            ),
        ),
    ],
)
def test_decode_request(inputs: list[RequestInput], expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        PandasCodec.decode_request(InferenceRequest(inputs=inputs)), expected
    )


def test_decode_request_of_one_bare_bytes_object_iterates_it_as_mlserver() -> None:
    # MLServer's test_decode_request[inference_request1]: a BYTES input whose data is one bytes
    # object (not a list) gives a column of its byte values, one per row.
    request = InferenceRequest(
        inputs=[
            RequestInput(name="a", shape=[3, 1], datatype="INT64", data=[1, 2, 3]),
            RequestInput(name="b", shape=[3, 1], datatype="BYTES", data=b"ABC"),
        ]
    )
    pd.testing.assert_frame_equal(
        PandasCodec.decode_request(request), pd.DataFrame({"a": [1, 2, 3], "b": [65, 66, 67]})
    )


def test_decode_response() -> None:
    response = InferenceResponse(
        model_name="my-model",
        outputs=[
            _out("a", [3, 1], "INT64", [1, 2, 3]),
            _out("b", [3, 1], "BYTES", [b"A", b"B", b"C"], parameters=STR),
        ],
    )
    decoded = PandasCodec.decode_response(response)
    pd.testing.assert_frame_equal(decoded, pd.DataFrame({"a": [1, 2, 3], "b": [b"A", b"B", b"C"]}))


def test_decode_inference_request_decodes_columns_first() -> None:
    request = InferenceRequest(
        parameters=Parameters(content_type="pd"),
        inputs=[
            RequestInput(
                name="a",
                datatype="INT64",
                shape=[3],
                data=[1, 2, 3],
                parameters=Parameters(content_type="np"),
            ),
            RequestInput(
                name="b", datatype="BYTES", shape=[3], data=[b"a", b"b", b"c"], parameters=STR
            ),
        ],
    )
    decoded = decode_inference_request(request)
    pd.testing.assert_frame_equal(decoded, pd.DataFrame({"a": [1, 2, 3], "b": ["a", "b", "c"]}))


def test_round_trip_through_json() -> None:
    frame = pd.DataFrame(
        {
            "x": np.array([0.5, np.nan, 2.0], dtype=np.float32),
            "n": np.array([1, 2, 3], dtype=np.uint16),
            "ok": [True, False, True],
            "s": ["a", "ü", "c"],
        }
    )
    request = PandasCodec.encode_request(frame)
    parsed = InferenceRequest.model_validate_json(request.model_dump_json())
    pd.testing.assert_frame_equal(decode_inference_request(parsed), frame)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (
            pd.DataFrame({"when": pd.to_datetime(["2021-01-01"])}),
            "column 'when' has dtype datetime64",
        ),
        (pd.DataFrame({"z": [1 + 1j]}), "column 'z' has dtype complex128"),
        (
            pd.DataFrame({"n": pd.array([1, None], dtype="Int64")}),
            "column 'n' \\(Int64\\) has missing values",
        ),
    ],
)
def test_encode_errors(frame: pd.DataFrame, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        PandasCodec.encode_request(frame)


def test_decode_errors() -> None:
    request = InferenceRequest(
        inputs=[
            RequestInput(name="a", shape=[2], datatype="INT8", data=[1, 2]),
            RequestInput(name="b", shape=[3], datatype="INT8", data=[1, 2, 3]),
        ]
    )
    with pytest.raises(CodecError, match=r"same number of rows \(a=2, b=3\)"):
        PandasCodec.decode_request(request)
    bad = InferenceRequest(
        inputs=[RequestInput(name="a", shape=[2], datatype="INT8", data=["x", 1])]
    )
    with pytest.raises(CodecError, match="input 'a' has data that does not fit datatype INT8"):
        PandasCodec.decode_request(bad)


# pandas is optional: imported on first use only, and not needed at all.


def _run(code: str) -> None:
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, timeout=60)


def test_pandas_is_imported_only_when_wanted() -> None:
    _run(
        "import sys\n"
        "import conveyor.codecs as codecs\n"
        "assert 'pandas' not in sys.modules\n"
        "import numpy as np\n"
        "assert codecs.find_request_codec(payload=np.array([1])) is codecs.NumpyRequestCodec\n"
        "assert 'pandas' not in sys.modules\n"
        "assert codecs.find_request_codec('pd').__name__ == 'PandasCodec'\n"
        "assert codecs.PandasCodec is codecs.find_request_codec('pd')\n"
    )


def test_codecs_work_without_pandas() -> None:
    _run(
        "import sys\n"
        "sys.modules['pandas'] = None  # as if not installed\n"
        "import numpy as np\n"
        "import conveyor.codecs as codecs\n"
        "assert codecs.find_request_codec('pd') is None\n"
        "output = codecs.NumpyCodec.encode_output('y', np.ones(2))\n"
        "assert codecs.NumpyCodec.decode_output(output).sum() == 2\n"
        "try:\n"
        "    from conveyor.codecs import PandasCodec\n"
        "except ImportError as exc:\n"
        "    assert 'pandas' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('PandasCodec imported without pandas')\n"
    )


def test_type_hint_finds_pandas_codec_once_pandas_is_imported() -> None:
    from conveyor.codecs import find_request_codec

    assert find_request_codec(type_hint=pd.DataFrame) is PandasCodec
    assert find_request_codec(payload=FRAME) is PandasCodec
