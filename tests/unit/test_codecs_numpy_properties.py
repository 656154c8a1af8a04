"""Property tests: NumpyCodec round-trips every numeric datatype, with and without JSON."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conveyor.codecs import NumpyCodec
from conveyor.codecs.numpy import to_datatype
from conveyor.types import Datatype, RequestInput, ResponseOutput

NUMERIC_DTYPES = [
    np.dtype(name)
    for name in (
        "bool",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "int8",
        "int16",
        "int32",
        "int64",
        "float16",
        "float32",
        "float64",
    )
]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


def _arrays(dtype: np.dtype[Any]) -> st.SearchStrategy[npt.NDArray[Any]]:
    # JSON has no infinity (it is dumped as null, which decodes as NaN); NaN itself round-trips.
    return hnp.arrays(dtype, SHAPES, elements=hnp.from_dtype(dtype, allow_infinity=False))


numeric_arrays = st.sampled_from(NUMERIC_DTYPES).flatmap(_arrays)


def _sent_shape(array: npt.NDArray[Any]) -> tuple[int, ...]:
    # MLServer's rule: [N] is sent as [N, 1], and a 0-d array as [1].
    if array.ndim > 1:
        return array.shape
    return (*array.shape, 1)


@settings(deadline=None)
@given(array=numeric_arrays)
def test_round_trip_through_json(array: npt.NDArray[Any]) -> None:
    request_input = NumpyCodec.encode_input("x", array)
    parsed = RequestInput.model_validate_json(request_input.model_dump_json())
    assert isinstance(parsed.data.root, list)
    decoded = NumpyCodec.decode_input(parsed)
    assert decoded.dtype == array.dtype
    assert decoded.shape == _sent_shape(array)
    np.testing.assert_array_equal(decoded, array.reshape(decoded.shape))


@settings(deadline=None)
@given(array=numeric_arrays)
def test_response_round_trip_through_json(array: npt.NDArray[Any]) -> None:
    output = NumpyCodec.encode_output("y", array)
    parsed = ResponseOutput.model_validate_json(output.model_dump_json())
    assert Datatype(parsed.datatype) is to_datatype(array.dtype)
    decoded = NumpyCodec.decode_output(parsed)
    np.testing.assert_array_equal(decoded, array.reshape(_sent_shape(array)))


@settings(deadline=None)
@given(array=numeric_arrays)
def test_round_trip_without_json_shares_memory(array: npt.NDArray[Any]) -> None:
    request_input = NumpyCodec.encode_input("x", array)
    assert isinstance(request_input.data.root, np.ndarray)
    decoded = NumpyCodec.decode_input(request_input)
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array.reshape(decoded.shape))
    if array.size:
        assert np.shares_memory(decoded, array)


@settings(deadline=None)
@given(
    array=numeric_arrays,
    big_endian=st.booleans(),
    transpose=st.booleans(),
    step=st.integers(1, 3),
)
def test_any_layout_or_byte_order_round_trips(
    array: npt.NDArray[Any], big_endian: bool, transpose: bool, step: int
) -> None:
    if big_endian:
        array = array.astype(array.dtype.newbyteorder(">"))
    if transpose:
        array = array.T
    if array.ndim:
        array = array[::step]
    output = NumpyCodec.encode_output("y", array)
    data = output.data.root
    assert data.flags.c_contiguous
    assert data.dtype.isnative
    assert Datatype(output.datatype) is to_datatype(array.dtype)
    for received in (output, ResponseOutput.model_validate_json(output.model_dump_json())):
        decoded = NumpyCodec.decode_output(received)
        np.testing.assert_array_equal(decoded, array.reshape(_sent_shape(array)))
