"""The wire format: jobs and messages to stream fields and back, without Redis.

``_as_redis`` turns encoded fields into what redis-py returns for them (bytes keys and values),
so the decoders are tested on exactly that input.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import msgpack
import numpy as np
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conveyor.broker import wire
from conveyor.broker.wire import (
    INLINE_MAX_BYTES,
    WIRE_VERSION,
    ErrorInfo,
    Fields,
    Job,
    Message,
    MessageType,
    Payload,
    decode_job,
    decode_message,
    encode_job,
    encode_message,
    fields_size,
)
from conveyor.errors import WireError
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

# V2 datatype -> numpy dtype (native order; byte order is varied separately).
V2_DTYPES: dict[str, str] = {
    "BOOL": "|b1",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}

_PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- helpers ----------------------------------------------------------------------------------


def _as_redis(fields: Fields) -> dict[bytes, bytes]:
    """What XRANGE/XREADGROUP return for an entry XADDed with ``fields``."""
    out: dict[bytes, bytes] = {}
    for key, value in fields.items():
        if isinstance(value, str):
            out[key.encode()] = value.encode()
        elif isinstance(value, bytes | memoryview):
            out[key.encode()] = bytes(value)
        else:
            out[key.encode()] = repr(value).encode()
    return out


def _job(*args: Payload, **kwargs: Payload) -> Job:
    return Job(
        id="req-1",
        method="predict",
        model="iris",
        version=None,
        reply="conveyor:reply:{c1}:req-1",
        bell="conveyor:bell:{c1}",
        deadline=1_732_531_234.125,
        sent_at=1_732_531_229.5,
        args=args,
        kwargs=kwargs,
    )


def _request(data: Any, datatype: str = "FP32", shape: list[int] | None = None) -> InferenceRequest:
    if shape is None:
        shape = list(data.shape) if isinstance(data, np.ndarray) else [len(data)]
    return InferenceRequest(
        inputs=[RequestInput(name="x", shape=shape, datatype=datatype, data=data)]
    )


def _roundtrip_job(job: Job) -> tuple[Job, dict[bytes, bytes]]:
    raw = _as_redis(encode_job(job))
    return decode_job(raw), raw


def _roundtrip_payload(payload: Payload) -> Payload:
    decoded, _ = _roundtrip_job(_job(payload))
    return decoded.args[0]


def assert_same(got: object, want: object, path: str = "$") -> None:
    """Deep equality that understands arrays (dtype, shape and exact bytes) and NaN."""
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), path
        assert got.dtype == want.dtype, (path, got.dtype, want.dtype)
        assert got.shape == want.shape, path
        if want.dtype.kind in "OSU":
            assert got.tolist() == want.tolist(), path
        else:
            assert got.tobytes() == want.tobytes(), path
    elif isinstance(want, np.generic):
        assert type(got) is type(want), path
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes(), path
    elif isinstance(want, pydantic.BaseModel):
        assert isinstance(got, pydantic.BaseModel), path
        assert type(got) is type(want), path
        assert_same(got.__dict__, want.__dict__, path)
        assert_same(got.__pydantic_extra__, want.__pydantic_extra__, f"{path}.extra")
    elif isinstance(want, Mapping):
        assert isinstance(got, Mapping), path
        assert list(got) == list(want) or set(got) == set(want), path
        for key in want:
            assert_same(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple), path
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and math.isnan(want):
        assert isinstance(got, float), path
        assert math.isnan(got), path
    else:
        assert got == want, path
        assert type(got) is type(want), path


def _decodes_or_raises_wire_error(
    decode: Callable[[dict[bytes, bytes]], object], raw: dict[bytes, bytes]
) -> None:
    """Decoding either works or raises WireError with a reason (anything else propagates)."""
    reason = "decoded"
    try:
        decode(raw)
    except WireError as error:
        reason = error.reason
    assert reason


def _is_view_of(arr: np.ndarray, field: bytes) -> bool:
    return bool(np.shares_memory(arr, np.frombuffer(field, dtype=np.uint8)))


# --- layout -----------------------------------------------------------------------------------


def test_job_fields_are_readable_text_then_envelope() -> None:
    job = Job(
        id="req-1",
        method="predict_stream",
        model="iris",
        version="v2",
        reply="r",
        bell="b",
        deadline=1_732_531_234.125,
        sent_at=1_732_531_229.0,
        attempt=3,
        inputs="conveyor:in:{c1}:req-1",
    )
    fields = encode_job(job)
    assert list(fields) == [
        "id",
        "method",
        "model",
        "version",
        "reply",
        "bell",
        "deadline",
        "sent_at",
        "attempt",
        "inputs",
        "envelope",
    ]
    assert fields["deadline"] == "1732531234.125"
    assert fields["sent_at"] == "1732531229.0"
    assert fields["attempt"] == "3"
    assert fields["version"] == "v2"
    envelope = msgpack.unpackb(fields["envelope"])
    assert envelope == {"v": WIRE_VERSION, "args": [], "kwargs": {}}
    assert next(iter(envelope)) == "v"
    assert decode_job(_as_redis(fields)) == job


def test_job_version_none_is_an_empty_field_and_inputs_is_left_out() -> None:
    fields = encode_job(_job())
    assert fields["version"] == ""
    assert "inputs" not in fields
    decoded = decode_job(_as_redis(fields))
    assert decoded.version is None
    assert decoded.inputs is None


def test_inline_reply_flag_rides_in_the_envelope_and_defaults_to_off() -> None:
    assert not _roundtrip_job(_job())[0].inline_reply
    decoded, raw = _roundtrip_job(_job()._replace(inline_reply=True))
    assert decoded.inline_reply
    assert msgpack.unpackb(raw[b"envelope"])["inline"] is True


def test_times_keep_sub_millisecond_precision() -> None:
    job = Job(
        id="a",
        method="m",
        model="m",
        version=None,
        reply="r",
        bell="b",
        deadline=1_732_531_234.123456,
        sent_at=0.000_001,
    )
    decoded, _ = _roundtrip_job(job)
    assert decoded.deadline == job.deadline
    assert decoded.sent_at == job.sent_at


@pytest.mark.parametrize("kind", list(MessageType))
def test_message_fields(kind: MessageType) -> None:
    error = (
        ErrorInfo("model_error", "ValueError", "bad input") if kind is MessageType.ERROR else None
    )
    message = Message(kind, "req-1", attempt=2, seq=5, payload={"ok": 1}, error=error)
    fields = encode_message(message)
    expected = ["type", "id", "attempt", "seq"]
    if error is not None:
        expected += ["code", "error_type", "error"]
        assert (fields["code"], fields["error_type"], fields["error"]) == (
            "model_error",
            "ValueError",
            "bad input",
        )
    assert list(fields) == [*expected, "envelope"]
    assert fields["type"] == kind.value
    assert (fields["attempt"], fields["seq"]) == ("2", "5")
    assert decode_message(_as_redis(fields)) == message


def test_big_tensor_is_a_field_of_its_own_sent_without_copy() -> None:
    arr = np.arange(INLINE_MAX_BYTES, dtype="<f4").reshape(4, -1)
    fields = encode_job(_job(_request(arr)))
    assert list(fields)[-2:] == ["envelope", "t0"]
    view = fields["t0"]
    assert isinstance(view, memoryview)
    assert view.format == "B"
    assert view.nbytes == arr.nbytes
    assert np.shares_memory(np.frombuffer(view, dtype=np.uint8), arr)
    # the envelope names the field with dtype and shape
    envelope = msgpack.unpackb(fields["envelope"])
    ext = envelope["args"][0][1]["inputs"][0]["data"]
    assert isinstance(ext, msgpack.ExtType)
    assert ext.code == 1
    assert msgpack.unpackb(ext.data) == ["<f4", [4, INLINE_MAX_BYTES // 4], 0]


def test_small_tensor_rides_in_the_envelope() -> None:
    arr = np.arange(6, dtype=">i8").reshape(2, 3)
    fields = encode_job(_job(_request(arr, "INT64")))
    assert not any(name.startswith("t") for name in fields)
    ext = msgpack.unpackb(fields["envelope"])["args"][0][1]["inputs"][0]["data"]
    assert msgpack.unpackb(ext.data) == [">i8", [2, 3], arr.tobytes()]


def test_tensor_fields_are_numbered_in_order() -> None:
    big = [np.full(INLINE_MAX_BYTES, i, dtype="|u1") for i in range(3)]
    fields = encode_job(_job(big[0], {"b": big[1]}, x=big[2]))
    assert [name for name in fields if name.startswith("t")] == ["t0", "t1", "t2"]
    decoded, _ = _roundtrip_job(_job(big[0], {"b": big[1]}, x=big[2]))
    assert_same(decoded.args, (big[0], {"b": big[1]}))
    assert_same(decoded.kwargs["x"], big[2])


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(V2_DTYPES))
@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize(
    "shape", [(), (0,), (3, 0, 2), (7,), (2, 3, 4), (INLINE_MAX_BYTES // 2 + 1,), (64, 33)]
)
def test_every_datatype_and_shape_round_trips(
    datatype: str, order: Literal["<", ">"], shape: tuple[int, ...]
) -> None:
    dtype = np.dtype(V2_DTYPES[datatype]).newbyteorder(order)
    rng = np.random.default_rng(len(shape) + dtype.itemsize)
    count = math.prod(shape)
    arr = np.frombuffer(rng.bytes(count * dtype.itemsize), dtype=dtype).reshape(shape)
    if datatype == "BOOL":
        arr = arr.view(np.uint8) % 2 == 1
    request = _request(arr, datatype, list(shape))
    decoded = _roundtrip_payload(request)
    assert_same(decoded, request)
    assert isinstance(decoded, InferenceRequest)
    got = decoded.inputs[0].data.root
    assert not got.flags.writeable


def test_decoded_big_tensor_is_a_read_only_view_over_the_field_bytes() -> None:
    arr = np.linspace(0, 1, 100_000, dtype="<f8").reshape(1000, 100)
    job, raw = _roundtrip_job(_job(_request(arr, "FP64")))
    request = job.args[0]
    assert isinstance(request, InferenceRequest)
    got = request.inputs[0].data.root
    assert isinstance(got, np.ndarray)
    assert _is_view_of(got, raw[b"t0"])
    assert not got.flags.writeable
    assert not got.flags.owndata
    np.testing.assert_array_equal(got, arr)


def test_non_contiguous_and_fortran_arrays_are_sent_in_c_order() -> None:
    base = np.arange(200_000, dtype="<i4").reshape(400, 500)
    for arr in (base[::2, ::3], base.T, np.asfortranarray(base), base[:, 1]):
        decoded = _roundtrip_payload(arr)
        assert_same(decoded, arr)
        assert isinstance(decoded, np.ndarray)
        assert decoded.flags.c_contiguous


def test_lists_stay_lists() -> None:
    request = _request([[1.5, 2.5], [3.5, 4.5]], "FP32", [2, 2])
    decoded = _roundtrip_payload(request)
    assert isinstance(decoded, InferenceRequest)
    assert decoded.inputs[0].data.root == [[1.5, 2.5], [3.5, 4.5]]
    assert_same(decoded, request)


def test_bytes_tensors_travel_as_lists_of_bin_or_str() -> None:
    cases = [
        np.array([b"a", b"", b"\x00\xff"], dtype=object),
        np.array([["x", "yz"], ["", "\u00e9\U0001f600"]], dtype=object),
        np.array([b"ab", b"c"]),  # |S2
        np.array(["ab", "c\u00e9"]),  # <U2
        np.array([], dtype=object).reshape(0, 2),
        np.array(b"scalar", dtype=object),
    ]
    for arr in cases:
        fields = encode_job(_job(_request(arr, "BYTES", list(arr.shape))))
        ext = msgpack.unpackb(fields["envelope"])["args"][0][1]["inputs"][0]["data"]
        _, shape, items = msgpack.unpackb(ext.data)
        assert shape == list(arr.shape)
        assert items == arr.ravel().tolist()
        decoded = _roundtrip_payload(_request(arr, "BYTES", list(arr.shape)))
        assert isinstance(decoded, InferenceRequest)
        assert_same(decoded.inputs[0].data.root, arr)


def test_plain_payloads_with_nested_arrays_and_scalars() -> None:
    payload: Payload = {
        "a": [np.arange(3, dtype="<u2"), {"deep": np.zeros((2, 2), dtype=">f8")}],
        "big": np.ones(INLINE_MAX_BYTES, dtype="|i1"),
        "s": np.float32(1.5),  # type: ignore[dict-item]
        "i": np.int64(-7),  # type: ignore[dict-item]
        "b": np.bool_(True),  # type: ignore[dict-item]
        "text": "h\u00e9",
        "raw": b"\x00\x01",
        "n": None,
        "f": 0.25,
        "t": True,
    }
    decoded = _roundtrip_payload(payload)
    assert_same(decoded, payload)


def test_response_and_metadata_round_trip() -> None:
    response = InferenceResponse(
        model_name="iris",
        model_version="v1",
        id="r1",
        parameters=Parameters(content_type="np", headers={"x": "1"}, custom=[1, 2]),
        outputs=[
            ResponseOutput(
                name="out",
                shape=[3, 4096],
                datatype="FP32",
                data=np.ones((3, 4096), dtype="<f4"),
                parameters=Parameters(content_type="np"),
            ),
            ResponseOutput(name="labels", shape=[2], datatype="BYTES", data=["a", "b"]),
        ],
    )
    metadata = MetadataModelResponse(
        name="iris",
        platform="sklearn",
        versions=["v1"],
        inputs=[MetadataTensor(name="x", datatype="FP32", shape=[-1, 4])],
    )
    for payload in (response, metadata):
        message = Message(MessageType.RESULT, "r1", attempt=1, payload=payload)
        decoded = decode_message(_as_redis(encode_message(message)))
        assert_same(decoded.payload, payload)
        assert isinstance(decoded.payload, type(payload))
        assert decoded.payload.model_dump(mode="json") == payload.model_dump(mode="json")


def test_unset_fields_stay_unset() -> None:
    request = InferenceRequest(
        id=None, inputs=[], outputs=[RequestOutput(name="y", parameters=Parameters(a=None))]
    )
    decoded = _roundtrip_payload(request)
    assert isinstance(decoded, InferenceRequest)
    assert decoded.model_dump() == request.model_dump()
    assert decoded.model_fields_set == {"inputs", "outputs"}
    assert decoded.outputs is not None
    assert decoded.outputs[0].parameters is not None
    assert decoded.outputs[0].parameters.model_extra == {"a": None}


def test_model_built_with_model_construct_sends_enum_values() -> None:
    from conveyor.types import Datatype, TensorData

    request = InferenceRequest.model_construct(
        inputs=[
            RequestInput.model_construct(
                name="x", shape=[1], datatype=Datatype.FP32, data=TensorData.model_construct([1.0])
            )
        ]
    )
    decoded = _roundtrip_payload(request)
    assert isinstance(decoded, InferenceRequest)
    assert decoded.inputs[0].datatype == "FP32"


def test_errors_round_trip() -> None:
    message = Message(
        MessageType.ERROR, "r", attempt=4, error=ErrorInfo("method_not_allowed", "X", "\u00e9 no")
    )
    assert decode_message(_as_redis(encode_message(message))) == message


def test_fields_size_counts_values() -> None:
    arr = np.ones(INLINE_MAX_BYTES, dtype="<f8")
    fields = encode_job(_job(arr))
    size = fields_size(fields)
    assert size == sum(len(value) for value in _as_redis(fields).values())
    assert size > arr.nbytes
    assert fields_size({"a": "\u00e9", "b": 12, "c": 1.5, "d": b"xy"}) == 2 + 2 + 3 + 2


def test_encoding_is_thread_safe() -> None:
    arrays = [np.full(INLINE_MAX_BYTES // 4 + i, i, dtype="<f4") for i in range(8)]
    results: dict[int, Payload] = {}

    def run(i: int) -> None:
        for _ in range(50):
            results[i] = _roundtrip_payload({"i": i, "a": arrays[i]})

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(8):
        assert_same(results[i], {"i": i, "a": arrays[i]})


def test_encoder_recovers_after_a_failed_or_huge_pack() -> None:
    big = np.ones(INLINE_MAX_BYTES, dtype="|u1")
    with pytest.raises(TypeError, match=r"cannot send a builtins\.object"):
        encode_job(_job(big, object()))  # type: ignore[arg-type]
    fields = encode_job(_job(b"x" * (3 << 20)))  # a huge envelope: its Packer is dropped
    assert "t0" not in fields
    assert_same(_roundtrip_payload([1, big]), [1, big])


# --- what encode refuses ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (object(), r"cannot send a builtins\.object"),
        (np.array(["2024-01-01"], dtype="datetime64[D]"), "dtype '<M8\\[D\\]'"),
        (np.zeros(2, dtype=[("a", "<i4")]), "cannot send a numpy array of dtype"),
        (np.array([1, "a"], dtype=object), "only str or bytes"),
        (Parameters(content_type="x"), "the V2 types on the wire are"),
    ],
)
def test_encode_refuses_what_cannot_travel(payload: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        encode_job(_job(payload))  # type: ignore[arg-type]


def test_encode_refuses_bad_field_values() -> None:
    with pytest.raises(ValueError, match="'id' must be a non-empty string"):
        encode_job(
            Job(
                id="",
                method="m",
                model="m",
                version=None,
                reply="r",
                bell="b",
                deadline=1,
                sent_at=1,
            )
        )
    with pytest.raises(ValueError, match="finite"):
        encode_job(
            Job(
                id="a",
                method="m",
                model="m",
                version=None,
                reply="r",
                bell="b",
                deadline=math.inf,
                sent_at=1,
            )
        )
    with pytest.raises(ValueError, match="attempt must be an int >= 1"):
        encode_job(
            Job(
                id="a",
                method="m",
                model="m",
                version=None,
                reply="r",
                bell="b",
                deadline=1,
                sent_at=1,
                attempt=0,
            )
        )
    with pytest.raises(ValueError, match="must carry an error"):
        encode_message(Message(MessageType.ERROR, "r"))
    with pytest.raises(ValueError, match="must not carry an error"):
        encode_message(Message(MessageType.RESULT, "r", error=ErrorInfo("c", "T", "m")))
    with pytest.raises(ValueError, match="64-bit"):
        encode_job(_job(1 << 70))


# --- what decode refuses ----------------------------------------------------------------------


def _valid_job_raw() -> dict[bytes, bytes]:
    return _as_redis(encode_job(_job(_request(np.ones(INLINE_MAX_BYTES, dtype="<f4")))))


def _envelope(**changes: Any) -> bytes:
    envelope: dict[str, Any] = {"v": WIRE_VERSION, "args": [], "kwargs": {}}
    envelope.update(changes)
    return msgpack.packb(envelope)  # type: ignore[no-any-return]


def _ext_array(dtype: str, shape: list[int], data: object, code: int = 1) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb([dtype, shape, data]))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({b"id": None}, "missing field 'id'"),
        ({b"envelope": None}, "missing field 'envelope'"),
        ({b"model": b""}, "field 'model' is empty"),
        ({b"deadline": b"soon"}, "field 'deadline' must be a time in unix seconds"),
        ({b"deadline": b"nan"}, "field 'deadline' must be a time"),
        ({b"attempt": b"-1"}, "field 'attempt' must be an integer >= 1"),
        ({b"attempt": b"0"}, "field 'attempt' must be an integer >= 1"),
        ({b"attempt": b"1.5"}, "field 'attempt' must be an integer"),
        ({b"method": b"\xff\xfe"}, "field 'method' is not UTF-8 text"),
        ({b"inputs": b""}, "field 'inputs' is empty"),
        ({b"envelope": b"\x93\x01"}, "field 'envelope' is not valid msgpack"),
        ({b"envelope": b"\xc1"}, "field 'envelope' is not valid msgpack"),
        ({b"envelope": msgpack.packb([1, 2])}, "envelope must be a msgpack map"),
        ({b"envelope": msgpack.packb({"args": []})}, "envelope has no format version 'v'"),
        (
            {b"envelope": msgpack.packb({"v": 2, "whatever": msgpack.ExtType(9, b"")})},
            "written by a newer Conveyor (format 2 > 1); upgrade this worker",
        ),
        ({b"envelope": _envelope(v=0)}, "unknown format version 0"),
        ({b"envelope": _envelope(args={})}, "envelope 'args' must be a list"),
        ({b"envelope": _envelope(kwargs=[])}, "envelope 'kwargs' must be a map"),
        ({b"envelope": _envelope(args=[["pickle", b"\x80\x04"]])}, "unknown payload tag 'pickle'"),
        ({b"envelope": _envelope(args=[["plain"]])}, "argument 0 is not a [tag, body] pair"),
        (
            {b"envelope": _envelope(args=[["InferenceRequest", {"inputs": 3}]])},
            "argument 0 is not a valid InferenceRequest: inputs: Input should be a valid list",
        ),
        (
            {b"envelope": _envelope(kwargs={"k": ["InferenceResponse", []]})},
            "keyword argument 'k' (InferenceResponse) must be a map of its fields",
        ),
        ({b"envelope": msgpack.packb({"v": 1, 1: 2})}, "is not allowed for map key"),
        (
            {b"envelope": _envelope(args=[["plain", msgpack.ExtType(7, b"")]])},
            "envelope holds msgpack ext type 7, which is not an array",
        ),
        ({b"t0": None}, "tensor field 't0' is missing"),
        ({b"t0": b"\x00" * 12}, "tensor field 't0' holds 12 bytes, but dtype <f4 and shape"),
        (
            {b"envelope": _envelope(args=[["plain", _ext_array("<f4", [2], b"\x00" * 7)]])},
            "inline tensor holds 7 bytes, but dtype <f4 and shape [2] need 8",
        ),
        (
            {b"envelope": _envelope(args=[["plain", _ext_array("<M8", [1], b"\x00" * 8)]])},
            "array dtype '<M8' is not one Conveyor sends",
        ),
        (
            {b"envelope": _envelope(args=[["plain", _ext_array("O", [1], [b""])]])},
            "array dtype 'O' is not one Conveyor sends",
        ),
        (
            {b"envelope": _envelope(args=[["plain", _ext_array("|O", [2], [b"a", 3])]])},
            "BYTES tensor of dtype |O holds a int",
        ),
        (
            {b"envelope": _envelope(args=[["plain", _ext_array("|O", [3], [b"a"])]])},
            "must carry a list of 3 elements",
        ),
        (
            {b"envelope": _envelope(args=[["plain", _ext_array("<U9", [1], [b"a"])]])},
            "BYTES tensor of dtype <U9 holds a bytes",
        ),
        (
            {
                b"envelope": _envelope(
                    args=[["plain", _ext_array("<U99999999", [1000], ["a"] * 1000)]]
                )
            },
            "out of proportion",
        ),
        (
            {b"envelope": _envelope(args=[["plain", _ext_array("<f4", [-1], b"")]])},
            "is not a list of non-negative ints",
        ),
        (
            {b"envelope": _envelope(args=[["plain", _ext_array("<f4", [1] * 65, b"")]])},
            "at most 64 ints",
        ),
        (
            {b"envelope": _envelope(args=[["plain", _ext_array("<f4", [1], 5)]])},
            "tensor field 't5' is missing",
        ),
        (
            {b"envelope": _envelope(args=[["plain", _ext_array("<f4", [1], -1)]])},
            "tensor field index -1 is negative",
        ),
        (
            {b"envelope": _envelope(args=[["plain", _ext_array("<f4", [2], b"\x00" * 8, 2)]])},
            "numpy scalar has shape [2], not []",
        ),
        (
            {b"envelope": _envelope(args=[["plain", msgpack.ExtType(1, b"\x92\x01\x02")]])},
            "array in the envelope is not [dtype, shape, data]",
        ),
        (
            {b"envelope": _envelope(args=[["plain", msgpack.ExtType(1, b"\xc1")]])},
            "array in the envelope is malformed",
        ),
    ],
)
def test_decode_job_refuses_with_one_reason(
    change: Mapping[bytes, bytes | None], reason: str
) -> None:
    raw: dict[bytes, bytes] = _valid_job_raw()
    for key, value in change.items():
        if value is None:
            del raw[key]
        else:
            raw[key] = value
    with pytest.raises(WireError) as info:
        decode_job(raw)
    assert reason in info.value.reason
    assert "\n" not in info.value.reason


def test_decode_hints_at_decode_responses() -> None:
    raw = {key.decode(): value.decode("latin-1") for key, value in _valid_job_raw().items()}
    with pytest.raises(WireError, match="decode_responses=False"):
        decode_job(raw)  # type: ignore[arg-type]


def test_decode_refuses_non_mappings_and_non_bytes_values() -> None:
    with pytest.raises(WireError, match="must be a mapping"):
        decode_job([(b"id", b"x")])  # type: ignore[arg-type]
    with pytest.raises(WireError, match="must be a mapping"):
        decode_message(None)  # type: ignore[arg-type]
    raw: dict[bytes, Any] = _valid_job_raw()
    raw[b"id"] = 12
    with pytest.raises(WireError, match="field 'id' must be bytes, not int"):
        decode_job(raw)
    raw = dict(_valid_job_raw())
    raw[b"t0"] = "text"
    with pytest.raises(WireError, match="tensor field 't0' must be bytes"):
        decode_job(raw)


def _message_raw(message: Message) -> dict[bytes, bytes]:
    return _as_redis(encode_message(message))


def test_decode_message_refuses_with_one_reason() -> None:
    result = _message_raw(Message(MessageType.RESULT, "r", 1, payload=[1]))
    error = _message_raw(Message(MessageType.ERROR, "r", 1, error=ErrorInfo("c", "T", "m")))
    cases: list[tuple[dict[bytes, bytes], str]] = [
        ({**result, b"type": b"pickle"}, "field 'type' is b'pickle', not one of result, chunk"),
        ({k: v for k, v in result.items() if k != b"type"}, "missing field 'type'"),
        ({**result, b"seq": b"x"}, "field 'seq' must be an integer >= 0"),
        ({**result, b"id": b""}, "field 'id' is empty"),
        ({k: v for k, v in error.items() if k != b"code"}, "missing field 'code'"),
        ({**error, b"envelope": msgpack.packb({"v": 1})}, "an error entry without an error"),
        ({**result, b"envelope": error[b"envelope"]}, "a 'result' entry carries an error"),
        ({**error, b"envelope": msgpack.packb({"v": 1, "error": [1]})}, "'error' must be a map"),
        (
            {**error, b"envelope": msgpack.packb({"v": 1, "error": {"code": "c"}})},
            "must have str 'code', 'type' and 'message'",
        ),
        (
            {**result, b"envelope": msgpack.packb({"v": 3})},
            "written by a newer Conveyor (format 3 > 1); upgrade this client",
        ),
        (
            {**result, b"type": b"input", b"envelope": msgpack.packb({"v": 3})},
            "upgrade this worker",
        ),
        ({**result, b"envelope": msgpack.packb({"v": 1, "payload": 1})}, "payload is not a [tag"),
    ]
    for raw, reason in cases:
        with pytest.raises(WireError) as info:
            decode_message(raw)
        assert reason in info.value.reason, (reason, info.value.reason)


def test_nothing_is_unpickled() -> None:
    import pickle

    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("unpickled!",))

    blob = pickle.dumps(Boom())
    raw = _as_redis(encode_job(_job(blob)))
    decoded = decode_job(raw)
    assert decoded.args == (blob,)  # bytes stay bytes
    raw[b"envelope"] = blob
    with pytest.raises(WireError, match="not valid msgpack"):
        decode_job(raw)


def test_decoded_defaults_for_missing_envelope_keys() -> None:
    raw = _valid_job_raw()
    raw[b"envelope"] = msgpack.packb({"v": 1, "future": "ignored"})
    assert decode_job(raw).args == ()
    message = _message_raw(Message(MessageType.END, "r", 1, seq=3))
    message[b"envelope"] = msgpack.packb({"v": 1})
    assert decode_message(message) == Message(MessageType.END, "r", 1, seq=3)


# --- properties -------------------------------------------------------------------------------

_RAW_DTYPES = st.sampled_from([*sorted(V2_DTYPES.values()), "<c8", "<c16"]).flatmap(
    lambda base: st.sampled_from(
        sorted({np.dtype(base).newbyteorder(order).str for order in ("<", ">")})
    )
)


def _small_arrays() -> st.SearchStrategy[np.ndarray]:
    return _RAW_DTYPES.flatmap(
        lambda dtype: hnp.arrays(
            np.dtype(dtype),
            hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
            elements=None if np.dtype(dtype).kind != "b" else st.booleans(),
        )
    )


@st.composite
def _big_arrays(draw: st.DrawFn) -> np.ndarray:
    """Arrays past the inline threshold, from seeded random bytes (NaN bit patterns included)."""
    dtype = np.dtype(draw(_RAW_DTYPES))
    # at least twice the threshold, so that every other column is still past it
    count = draw(st.integers(2 * INLINE_MAX_BYTES // dtype.itemsize + 4, 4 * INLINE_MAX_BYTES))
    rows = draw(st.sampled_from([1, 2, 4]))
    count -= count % rows
    seed = draw(st.integers(0, 2**32 - 1))
    data = np.random.default_rng(seed).bytes(count * dtype.itemsize)
    arr = np.frombuffer(data, dtype=dtype).reshape(rows, -1)
    if draw(st.booleans()):
        arr = arr[:, ::2]  # non-contiguous
    if draw(st.booleans()):
        arr = arr.T
    return arr


def _bytes_arrays() -> st.SearchStrategy[np.ndarray]:
    item = st.one_of(st.binary(max_size=8), st.text(max_size=8))
    return hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4).flatmap(
        lambda shape: st.lists(item, min_size=math.prod(shape), max_size=math.prod(shape)).map(
            lambda items: _object_array(items, shape)
        )
    )


def _object_array(items: Sequence[object], shape: tuple[int, ...]) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr.reshape(shape)


_ARRAYS = st.one_of(_small_arrays(), _big_arrays(), _bytes_arrays())

_PLAIN: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=10),
        st.binary(max_size=10),
        _ARRAYS,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=8,
)


@st.composite
def _requests(draw: st.DrawFn) -> InferenceRequest:
    inputs = []
    for i in range(draw(st.integers(0, 3))):
        arr = draw(st.one_of(_ARRAYS, st.lists(st.integers(-5, 5), max_size=4)))
        shape = list(arr.shape) if isinstance(arr, np.ndarray) else [len(arr)]
        datatype = draw(st.sampled_from([*V2_DTYPES, "BYTES"]))
        inputs.append(RequestInput(name=f"in{i}", shape=shape, datatype=datatype, data=arr))
    parameters = draw(st.none() | st.builds(Parameters, content_type=st.text(max_size=4)))
    return InferenceRequest(
        id=draw(st.none() | st.text(max_size=8)), parameters=parameters, inputs=inputs
    )


@st.composite
def _responses(draw: st.DrawFn) -> InferenceResponse:
    outputs = []
    for i in range(draw(st.integers(0, 2))):
        arr = draw(_ARRAYS)
        outputs.append(
            ResponseOutput(name=f"o{i}", shape=list(arr.shape), datatype="FP32", data=arr)
        )
    return InferenceResponse(model_name="m", outputs=outputs)


_PAYLOADS = st.one_of(_PLAIN, _requests(), _responses())


@_PROPERTY
@given(
    args=st.lists(_PAYLOADS, max_size=3),
    kwargs=st.dictionaries(st.text(max_size=6), _PAYLOADS, max_size=2),
    attempt=st.integers(1, 10**6),
    deadline=st.floats(0, 4e9),
    version=st.none() | st.text(min_size=1, max_size=5),
)
def test_jobs_round_trip(
    args: list[Payload],
    kwargs: dict[str, Payload],
    attempt: int,
    deadline: float,
    version: str | None,
) -> None:
    job = Job(
        id="r",
        method="predict",
        model="m\u00e9",
        version=version,
        reply="rep",
        bell="bell",
        deadline=deadline,
        sent_at=deadline / 2,
        attempt=attempt,
        args=tuple(args),
        kwargs=kwargs,
    )
    decoded, raw = _roundtrip_job(job)
    assert (decoded.id, decoded.version, decoded.attempt) == (job.id, version, attempt)
    assert (decoded.deadline, decoded.sent_at) == (job.deadline, job.sent_at)
    assert_same(decoded.args, job.args)
    assert_same(decoded.kwargs, job.kwargs)
    for name, value in raw.items():
        if name.startswith(b"t") and name[1:].isdigit():
            assert len(value) >= INLINE_MAX_BYTES


@_PROPERTY
@given(
    kind=st.sampled_from(list(MessageType)),
    payload=_PAYLOADS,
    attempt=st.integers(0, 10**6),
    seq=st.integers(0, 10**9),
    text=st.text(max_size=20),
)
def test_messages_round_trip(
    kind: MessageType, payload: Payload, attempt: int, seq: int, text: str
) -> None:
    error = ErrorInfo("model_error", "E", text) if kind is MessageType.ERROR else None
    message = Message(kind, "r", attempt=attempt, seq=seq, payload=payload, error=error)
    decoded = decode_message(_as_redis(encode_message(message)))
    assert (decoded.type, decoded.id, decoded.attempt, decoded.seq, decoded.error) == (
        kind,
        "r",
        attempt,
        seq,
        error,
    )
    assert_same(decoded.payload, payload)


@_PROPERTY
@given(arr=_big_arrays())
def test_big_arrays_decode_as_views_over_their_field(arr: np.ndarray) -> None:
    decoded, raw = _roundtrip_job(_job(arr))
    got = decoded.args[0]
    assert isinstance(got, np.ndarray)
    assert_same(got, arr)
    assert _is_view_of(got, raw[b"t0"])
    assert not got.flags.writeable


_FIELD_NAMES = st.sampled_from(
    [
        b"id",
        b"method",
        b"model",
        b"version",
        b"reply",
        b"bell",
        b"deadline",
        b"sent_at",
        b"attempt",
        b"inputs",
        b"envelope",
        b"t0",
        b"t1",
        b"type",
        b"seq",
        b"code",
        b"error_type",
        b"error",
    ]
)


@_PROPERTY
@given(fields=st.dictionaries(_FIELD_NAMES | st.binary(max_size=4), st.binary(max_size=40)))
def test_random_fields_raise_only_wire_error(fields: dict[bytes, bytes]) -> None:
    for decode in (decode_job, decode_message):
        _decodes_or_raises_wire_error(decode, fields)


@_PROPERTY
@given(data=st.data())
def test_corrupted_entries_raise_only_wire_error(data: st.DataObject) -> None:
    payload = data.draw(_PAYLOADS)
    message = data.draw(st.booleans())
    raw = (
        _message_raw(Message(MessageType.RESULT, "r", 1, payload=payload))
        if message
        else _as_redis(encode_job(_job(payload)))
    )
    name = data.draw(st.sampled_from(sorted(raw)))
    value = raw[name]
    how = data.draw(st.sampled_from(["truncate", "flip", "random", "drop"]))
    if how == "truncate":
        raw[name] = value[: data.draw(st.integers(0, max(len(value) - 1, 0)))]
    elif how == "flip" and value:
        at = data.draw(st.integers(0, len(value) - 1))
        raw[name] = (
            value[:at] + bytes([value[at] ^ data.draw(st.integers(1, 255))]) + value[at + 1 :]
        )
    elif how == "random":
        raw[name] = data.draw(st.binary(max_size=64))
    else:
        del raw[name]
    _decodes_or_raises_wire_error(decode_message if message else decode_job, raw)


@_PROPERTY
@given(envelope=st.binary(max_size=200))
def test_random_envelopes_raise_only_wire_error(envelope: bytes) -> None:
    raw = _valid_job_raw()
    raw[b"envelope"] = envelope
    _decodes_or_raises_wire_error(decode_job, raw)


def test_module_exports() -> None:
    assert set(wire.__all__) <= set(dir(wire))
    assert "encode_job" in wire.__all__


# --- doorbell, codes, verbs, dead letters -----------------------------------------------------


def test_doorbell_entries_are_request_ids_or_inline_messages() -> None:
    message = Message(MessageType.RESULT, "req-2", 1, 0, {"y": [1, 2]}, None, "5-0")
    packed = wire.pack_inline(encode_message(message))
    assert packed[:1] == wire.INLINE_MARK
    rung = wire.read_rung([b"req-1", packed, "req-3"])
    assert rung.ids == ["req-1", "req-3"]
    assert len(rung.messages) == 1
    assert decode_message(rung.messages[0]) == message


@pytest.mark.parametrize("junk", [b"\x00", b"\x00\xc1", b"\x00\x93\x01\x02\x03"])
def test_a_broken_inline_entry_reads_as_fields_the_decoder_refuses(junk: bytes) -> None:
    rung = wire.read_rung([junk])
    assert rung.ids == []
    assert rung.messages == [{}]
    with pytest.raises(WireError):
        decode_message(rung.messages[0])


def test_error_codes_and_control_verbs_are_their_text_on_the_wire() -> None:
    code: str = wire.ErrorCode.DEADLINE  # a str: it compares equal to its text
    assert code == "deadline"
    assert f"{wire.ErrorCode.BAD_ENTRY}" == "bad_entry"
    error = ErrorInfo(wire.ErrorCode.DEADLINE, "DeadlineExceeded", "too late")
    raw = _as_redis(encode_message(Message(MessageType.ERROR, "req-1", 1, error=error)))
    assert raw[b"code"] == b"deadline"
    decoded = decode_message(raw).error
    assert decoded is not None
    assert decoded.code == wire.ErrorCode.DEADLINE
    cancel = _job()._replace(method=wire.ControlVerb.CANCEL)
    decoded_job, raw = _roundtrip_job(cancel)
    assert raw[b"method"] == b"cancel"
    assert decoded_job.method == wire.ControlVerb.CANCEL


def test_dead_letter_fields_are_named_once() -> None:
    assert wire.DEAD_FIELDS == (
        "dead_reason",
        "dead_at",
        "dead_from",
        "dead_entry",
        "dead_deliveries",
        "dead_consumer",
    )
    assert [str(name) for name in wire.DeadField] == list(wire.DEAD_FIELDS)


def test_a_dead_letter_is_its_job_after_the_dead_fields() -> None:
    job = _valid_job_raw()
    job[b"dead_reason"] = b"a job's own field of that name"
    dead = wire.dead_letter(
        job,
        reason="too many deliveries",
        at=1_700_000_000.25,
        stream="conveyor:{iris}:jobs",
        entry=b"5-0",
        deliveries=4,
        consumer="w1",
    )
    assert list(dead)[:6] == list(wire.DEAD_FIELDS)
    assert dead["dead_reason"] == "too many deliveries"
    assert dead["dead_at"] == "1700000000.250"
    assert (dead["dead_entry"], dead["dead_deliveries"]) == (b"5-0", "4")
    del job[b"dead_reason"]
    stored = _as_redis({k if isinstance(k, str) else k.decode(): v for k, v in dead.items()})
    assert wire.job_fields(stored) == job
    assert decode_job(wire.job_fields(stored)) == decode_job(job)
