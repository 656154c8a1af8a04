"""``NumpyCodec`` ("np"): a numpy array as a V2 tensor, kept an array all the way through.

MLServer turns every array into a Python list (``flatten().tolist()``); here the array itself
goes into ``data`` (C-contiguous, native byte order: a view of the caller's array when it already
is) and becomes a list only if the message is dumped as JSON. ``data`` is then either a (flat or
nested) list or an array with ``prod(shape)`` elements; decoding reshapes either.

Decoding an array is a ``reshape`` (a view); the dtype is converted only when it does not match
the datatype, and a value that does not fit the datatype raises ``CodecError`` instead of wrapping
around. BYTES tensors decode to ``S`` arrays (bytes; numpy drops trailing NULs), ``U`` arrays
(when the data holds str), or ``object`` arrays (mixed, or with ``None``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from conveyor.codecs.base import InputCodec, register_input_codec, register_request_codec
from conveyor.codecs.errors import CodecError
from conveyor.codecs.lists import _flat_elements, is_list_of
from conveyor.codecs.string import encode_str
from conveyor.codecs.utils import (
    InputOrOutput,
    SingleInputRequestCodec,
    _describe,
    inject_batch_dimension,
)
from conveyor.types import Datatype, Parameters, RequestInput, ResponseOutput

__all__ = ("NumpyCodec", "NumpyRequestCodec", "convert_nan", "to_datatype", "to_dtype")

_DATATYPE_TO_DTYPE: dict[Datatype, np.dtype[Any]] = {
    Datatype.BOOL: np.dtype(np.bool_),
    Datatype.UINT8: np.dtype(np.uint8),
    Datatype.UINT16: np.dtype(np.uint16),
    Datatype.UINT32: np.dtype(np.uint32),
    Datatype.UINT64: np.dtype(np.uint64),
    Datatype.INT8: np.dtype(np.int8),
    Datatype.INT16: np.dtype(np.int16),
    Datatype.INT32: np.dtype(np.int32),
    Datatype.INT64: np.dtype(np.int64),
    Datatype.FP16: np.dtype(np.float16),
    Datatype.FP32: np.dtype(np.float32),
    Datatype.FP64: np.dtype(np.float64),
}
# Keyed by (kind, itemsize), so that byte order does not matter.
_KIND_SIZE_TO_DATATYPE = {
    (dt.kind, dt.itemsize): datatype for datatype, dt in _DATATYPE_TO_DTYPE.items()
}
# numpy has more string types than the V2 protocol: all of them are BYTES.
_BYTES_KINDS = frozenset("SUO")
_CAST_ERRORS = (ValueError, TypeError, OverflowError, FloatingPointError)


def _datatype_of(dtype: np.dtype[Any]) -> Datatype | None:
    if dtype.kind in _BYTES_KINDS:
        return Datatype.BYTES
    return _KIND_SIZE_TO_DATATYPE.get((dtype.kind, dtype.itemsize))


def to_datatype(dtype: np.dtype[Any]) -> Datatype:
    """The V2 datatype of ``dtype``, whatever its byte order; raises ``CodecError`` if none."""
    datatype = _datatype_of(dtype)
    if datatype is None:
        raise CodecError(f"numpy dtype {dtype} has no V2 datatype")
    return datatype


def to_dtype(input_or_output: InputOrOutput) -> np.dtype[Any]:
    """The numpy dtype a tensor decodes to.

    For BYTES: ``U`` (str) when the data holds str, as in MLServer, else ``S`` (sized by numpy
    from the longest element, where MLServer uses the last dimension of the shape).
    """
    datatype = Datatype(input_or_output.datatype)
    if datatype is not Datatype.BYTES:
        return _DATATYPE_TO_DTYPE[datatype]
    root = input_or_output.data.root
    if isinstance(root, np.ndarray):
        root_dtype: np.dtype[Any] = root.dtype
        if root_dtype.kind in _BYTES_KINDS:
            return root_dtype
    if is_list_of(root, str) or isinstance(root, str):
        return np.dtype(str)
    return np.dtype(bytes)


def convert_nan(val: Any) -> Any:
    """``None`` for a float NaN, otherwise ``val``; JSON has no NaN."""
    if isinstance(val, float | np.floating) and math.isnan(val):
        return None
    return val


def _fail(input_or_output: InputOrOutput, problem: str) -> CodecError:
    return CodecError(f"{_describe(input_or_output)} {problem}", name=input_or_output.name)


def _numbers_from_list(input_or_output: InputOrOutput, root: Any) -> npt.NDArray[Any]:
    datatype = Datatype(input_or_output.datatype)
    try:
        # Overflow (1e10 as FP16) raises instead of giving inf; Python ints out of range raise
        # OverflowError by themselves. Fractions are truncated for integer types, as numpy does.
        with np.errstate(over="raise", invalid="raise"):
            return np.array(root, dtype=_DATATYPE_TO_DTYPE[datatype])
    except _CAST_ERRORS as exc:
        raise _fail(
            input_or_output, f"has data that does not fit datatype {datatype.value}: {exc}"
        ) from exc


def _split_buffer(
    input_or_output: InputOrOutput, buffers: list[bytes], count: int
) -> npt.NDArray[Any]:
    # MLServer's NumpyCodec sends an `S` array as one buffer, `[array.tobytes()]`, of fixed-width
    # elements. We read that form so MLServer clients keep working, and never produce it.
    buffer = buffers[0] if len(buffers) == 1 else b"".join(buffers)
    itemsize, rest = divmod(len(buffer), count)
    if rest or not itemsize:
        raise _fail(
            input_or_output,
            f"has {len(buffers)} bytes element(s) ({len(buffer)} bytes), which do not split into "
            f"shape {input_or_output.shape}",
        )
    return np.frombuffer(buffer, dtype=f"S{itemsize}")


def _bytes_from_list(input_or_output: InputOrOutput, root: Any) -> npt.NDArray[Any]:
    elements = _flat_elements(root)
    if all(isinstance(elem, str) for elem in elements):
        return np.array(elements, dtype=str)
    if all(isinstance(elem, bytes) for elem in elements):
        count = math.prod(input_or_output.shape)
        if 0 < len(elements) < count:
            return _split_buffer(input_or_output, elements, count)
        return np.array(elements, dtype=bytes)
    for idx, elem in enumerate(elements):
        if not (elem is None or isinstance(elem, bytes | str)):
            raise _fail(
                input_or_output,
                f"is BYTES, but element {idx} is {type(elem).__name__}; expected bytes or str",
            )
    mixed = np.empty(len(elements), dtype=object)
    mixed[:] = elements
    return mixed


def _check_int_range(
    input_or_output: InputOrOutput, array: npt.NDArray[Any], dtype: np.dtype[Any]
) -> None:
    # astype() wraps integers around silently (300 -> 44 as UINT8); a JSON list raises instead.
    if dtype.kind not in "iu" or array.dtype.kind not in "iu" or array.size == 0:
        return
    if np.can_cast(array.dtype, dtype):
        return
    info = np.iinfo(dtype)
    low, high = int(array.min()), int(array.max())
    if low < info.min or high > info.max:
        raise _fail(
            input_or_output,
            f"holds values in [{low}, {high}], outside {input_or_output.datatype}'s range "
            f"[{info.min}, {info.max}]",
        )


def _from_array(input_or_output: InputOrOutput, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    datatype = Datatype(input_or_output.datatype)
    if datatype is Datatype.BYTES:
        if array.dtype.kind in _BYTES_KINDS:
            return array
        raise _fail(input_or_output, f"is BYTES, but its data is a {array.dtype} array")
    dtype = _DATATYPE_TO_DTYPE[datatype]
    if _datatype_of(array.dtype) is datatype:
        return array  # in any byte order: numpy reads the values right either way
    _check_int_range(input_or_output, array, dtype)
    try:
        with np.errstate(over="raise", invalid="raise"):
            return array.astype(dtype)
    except _CAST_ERRORS as exc:
        raise _fail(
            input_or_output, f"holds {array.dtype} data that does not fit {datatype.value}: {exc}"
        ) from exc


def _to_ndarray(input_or_output: InputOrOutput) -> npt.NDArray[Any]:
    root = input_or_output.data.root
    if isinstance(root, np.ndarray):
        array = _from_array(input_or_output, root)
    elif Datatype(input_or_output.datatype) is Datatype.BYTES:
        array = _bytes_from_list(input_or_output, root)
    else:
        array = _numbers_from_list(input_or_output, root)
    try:
        return array.reshape(input_or_output.shape)
    except ValueError as exc:
        raise _fail(
            input_or_output,
            f"has {array.size} element(s), which do not fit shape {input_or_output.shape}",
        ) from exc


def _c_contiguous_native(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    if array.dtype.isnative and array.flags.c_contiguous:
        return array
    # One copy, so that whoever reads `data` (a JSON dump, the wire) can take its buffer as is.
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))


def _array_data(payload: npt.NDArray[Any], name: str) -> Any:
    """An array's elements as a tensor's ``data``: the array itself (C-contiguous, native byte
    order: a view where it already is), or, for str and object arrays, a flat list."""
    if payload.dtype.kind == "U":
        return [encode_str(elem) for elem in payload.ravel().tolist()]  # as MLServer
    if payload.dtype.kind == "O":
        data = payload.ravel().tolist()  # as MLServer: str, bytes and None stay as they are
        for idx, elem in enumerate(data):
            if not (elem is None or isinstance(elem, bytes | str)):
                raise CodecError(
                    f"'{name}' is an object array, sent as BYTES, but element {idx} is "
                    f"{type(elem).__name__}; expected bytes, str or None",
                    name=name,
                )
        return data
    return _c_contiguous_native(payload)


def _encode_data(data: npt.NDArray[Any], datatype: Datatype) -> Any:
    """MLServer's helper, for codecs written for MLServer: ``data``'s elements, flat, to put in
    a tensor of ``datatype`` (the array's own).

    MLServer returns a list (NaN as None, an ``S`` array as one buffer); here, as everywhere in
    Conveyor, a numeric or ``S`` array stays an array, flattened (a view where possible), and
    becomes MLServer's list only if dumped as JSON. str and object arrays give lists.
    """
    encoded = _array_data(data, "data")
    return encoded.reshape(-1) if isinstance(encoded, np.ndarray) else encoded


def _encode(name: str, payload: object) -> tuple[Datatype, list[int], Any]:
    if not isinstance(payload, np.ndarray):
        raise CodecError(
            f"NumpyCodec encodes numpy arrays, but '{name}' is {type(payload).__name__}", name=name
        )
    datatype = _datatype_of(payload.dtype)
    if datatype is None:
        raise CodecError(f"'{name}' has dtype {payload.dtype}, which has no V2 datatype", name=name)
    # As MLServer: a 1-d array of N elements is sent as [N, 1] (and a 0-d one as [1]).
    shape = inject_batch_dimension(list(payload.shape))
    data = _array_data(payload, name)
    if isinstance(data, np.ndarray):
        data = data.reshape(shape)
    return datatype, shape, data


@register_input_codec
class NumpyCodec(InputCodec):
    """Decodes a request input (response output) as a numpy array, and encodes one."""

    ContentType = "np"
    TypeHint = np.ndarray

    @classmethod
    def can_encode(cls, payload: object) -> bool:
        return isinstance(payload, np.ndarray)

    @classmethod
    def encode_output(cls, name: str, payload: npt.NDArray[Any], **kwargs: Any) -> ResponseOutput:
        """The array as ``data`` (a view where possible); raises ``CodecError`` for dtypes with
        no V2 datatype (complex, datetime64, ...)."""
        datatype, shape, data = _encode(name, payload)
        return ResponseOutput(
            name=name,
            datatype=datatype,
            shape=shape,
            data=data,
            parameters=Parameters(content_type=cls.ContentType),
        )

    @classmethod
    def decode_output(cls, response_output: ResponseOutput) -> npt.NDArray[Any]:
        return _to_ndarray(response_output)

    @classmethod
    def encode_input(cls, name: str, payload: npt.NDArray[Any], **kwargs: Any) -> RequestInput:
        """As ``encode_output``, for a request."""
        datatype, shape, data = _encode(name, payload)
        return RequestInput(
            name=name,
            datatype=datatype,
            shape=shape,
            data=data,
            parameters=Parameters(content_type=cls.ContentType),
        )

    @classmethod
    def decode_input(cls, request_input: RequestInput) -> npt.NDArray[Any]:
        """The data as an array of the input's shape and datatype.

        A list is converted (one copy); an array is reshaped (a view) and converted only if its
        dtype does not match. Raises ``CodecError`` naming the input if the data does not fit
        the shape or the datatype.
        """
        return _to_ndarray(request_input)


@register_request_codec
class NumpyRequestCodec(SingleInputRequestCodec):
    """Decodes the request's single input (response's single output) as a numpy array."""

    InputCodec = NumpyCodec
    ContentType = NumpyCodec.ContentType
