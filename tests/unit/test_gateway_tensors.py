"""gateway/tensors.py: raw V2 tensor bytes <-> numpy, checked against tritonclient's own
serializers (a client nobody here wrote) for every datatype."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from conveyor.gateway.errors import Failure, failure_of
from conveyor.gateway.tensors import DTYPES, TensorError, from_raw, to_raw

NUMERIC = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 7, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, 7, 127]], dtype=np.int8),
    "INT16": np.array([[-(2**15), 7, 2**15 - 1]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 7, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 7, 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[-1.5, 0.0, 65504.0]], dtype=np.float16),
    "FP32": np.array([[-1.5, np.pi, 3e38]], dtype=np.float32),
    "FP64": np.array([[-1.5, np.pi, 1e300]], dtype=np.float64),
}


@pytest.mark.parametrize("datatype", sorted(NUMERIC))
def test_fixed_size_round_trip_as_tritonclient_sends(datatype: str) -> None:
    array = NUMERIC[datatype]
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()  # what tritonclient sends
    decoded = from_raw("x", datatype, [1, 3], raw)
    assert decoded.dtype == DTYPES[datatype].newbyteorder("=")
    assert decoded.shape == (1, 3)
    np.testing.assert_array_equal(decoded, array)
    assert to_raw("x", datatype, [1, 3], decoded) == raw
    assert to_raw("x", datatype, [1, 3], array.tolist()) == raw  # a model answering lists


def test_a_fixed_size_tensor_is_a_view_not_a_copy() -> None:
    raw = bytearray(np.arange(1 << 18, dtype=np.float32).tobytes())  # 1 MiB
    decoded = from_raw("x", "FP32", [512, 512], memoryview(raw).toreadonly())
    assert not decoded.flags.owndata
    assert not decoded.flags.writeable
    assert decoded[511, 511] == (1 << 18) - 1


def test_bytes_as_tritonclient_serializes_them() -> None:
    items = np.array([b"", b"a\x00", "naïve".encode(), b"\x00\x00"], dtype=object)
    raw = serialize_byte_tensor(items).item()
    decoded = from_raw("s", "BYTES", [2, 2], raw)
    assert decoded.dtype == object
    assert decoded.shape == (2, 2)
    assert decoded.ravel().tolist() == items.tolist()  # trailing NULs kept
    assert to_raw("s", "BYTES", [2, 2], decoded) == raw
    back = deserialize_bytes_tensor(to_raw("s", "BYTES", [4], ["", "a\x00", "naïve", b"\x00\x00"]))
    assert back.tolist() == items.tolist()


@pytest.mark.parametrize(
    "data",
    [
        np.array(["ab", "c"]),  # U
        np.array([b"ab", b"c"]),  # S
        [["ab"], ["c"]],  # nested list of str
        [b"ab", "c"],  # mixed
    ],
)
def test_bytes_outputs_in_any_form_a_model_answers(data: object) -> None:
    assert (
        to_raw("s", "BYTES", [2, 1], data)
        == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
    )


def test_empty_tensors() -> None:
    assert from_raw("x", "FP32", [0, 3], b"").shape == (0, 3)
    assert from_raw("s", "BYTES", [0], b"").shape == (0,)
    assert to_raw("s", "BYTES", [0], []) == b""
    assert to_raw("x", "INT8", [2, 0], np.zeros((2, 0), np.int8)) == b""


def test_non_contiguous_arrays_go_in_c_order() -> None:
    array = np.arange(6, dtype=np.int32).reshape(2, 3).T
    assert to_raw("x", "INT32", [3, 2], array) == np.ascontiguousarray(array).tobytes()


def test_a_big_endian_array_is_sent_little_endian() -> None:
    array = np.array([1, 2], dtype=">i4")
    assert to_raw("x", "INT32", [2], array) == np.array([1, 2], "<i4").tobytes()


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "words"),
    [
        ("FP32", [2], b"\x00" * 7, "needs 8 bytes, but 7 came"),
        ("BF16", [1], b"\x00\x00", "datatype 'BF16'; supported: BOOL"),
        ("INT8", [-1], b"", "dimensions must be >= 0"),
        ("BYTES", [1], b"\x01\x00", "inside an element's 4-byte length"),
        ("BYTES", [1], b"\x05\x00\x00\x00ab", "element 0 says 5 bytes, but only 2 remain"),
        ("BYTES", [3], b"\x00\x00\x00\x00", "needs 3 element(s), but its bytes hold 1"),
    ],
)
def test_bytes_that_do_not_fit_say_why(
    datatype: str, shape: list[int], raw: bytes, words: str
) -> None:
    with pytest.raises(TensorError, match="tensor 'in0'") as failure:
        from_raw("in0", datatype, shape, raw)
    assert words in str(failure.value)


def test_outputs_that_do_not_fit_say_why() -> None:
    with pytest.raises(TensorError, match="3 element"):
        to_raw("y", "FP32", [2], [1.0, 2.0, 3.0])
    with pytest.raises(TensorError, match="does not fit UINT8"):
        to_raw("y", "UINT8", [1], ["x"])
    with pytest.raises(TensorError, match="element 1 is int"):
        to_raw("y", "BYTES", [2], ["a", 3])


def test_a_tensor_error_is_a_bad_request() -> None:
    with pytest.raises(TensorError) as failure:
        from_raw("x", "FP32", [1], b"")
    assert failure_of(failure.value) == Failure(400, "INVALID_ARGUMENT", str(failure.value))
