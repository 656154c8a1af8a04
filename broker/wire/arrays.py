"""Numpy arrays on the wire: the body of msgpack ext type 1 (2 for a numpy scalar), both ways.

The body is ``[dtype, shape, data]`` (the package head says what ``data`` may be): the C-order
bytes inline, the index ``i`` of the entry's field ``t<i>`` holding them (arrays of
:data:`~conveyor.broker.wire.schema.INLINE_MAX_BYTES` or more), or a BYTES tensor's elements.
Decoding builds arrays only from an allowlist of dtypes, and large ones as read-only views over
the bytes Redis returned.
"""

from __future__ import annotations

import re
from typing import cast

import msgpack
import numpy as np

from conveyor.broker.wire.schema import INLINE_MAX_BYTES, AsRead, RawFields
from conveyor.errors import WireError

__all__ = (
    "EXT_NDARRAY",
    "EXT_SCALAR",
    "array_body",
    "read_array",
    "tensor_key",
)

EXT_NDARRAY = 1
EXT_SCALAR = 2

# Fixed-size dtypes that travel as raw bytes, both byte orders, keyed by numpy's dtype string.
_RAW_DTYPES: dict[str, np.dtype] = {}
for _code in ("b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "c8", "c16"):
    for _order in ("<", ">"):
        _dt = np.dtype(_code).newbyteorder(_order)
        _RAW_DTYPES[_dt.str] = _dt
del _code, _order, _dt
_RAW_DTYPE_STRS: dict[np.dtype, str] = {dtype: text for text, dtype in _RAW_DTYPES.items()}
_OBJECT_DTYPE = np.dtype(object)
_TEXT_DTYPE_RE = re.compile(r"(?:\|S|[<>]U)[1-9][0-9]{0,8}")
_MAX_NDIM = 64  # numpy 2's limit

_TENSOR_KEYS = tuple(f"t{i}" for i in range(64))
_TENSOR_RAW_KEYS = tuple(key.encode() for key in _TENSOR_KEYS)


def tensor_key(index: int) -> str:
    return _TENSOR_KEYS[index] if index < len(_TENSOR_KEYS) else f"t{index}"


def _tensor_raw_key(index: int) -> bytes:
    return _TENSOR_RAW_KEYS[index] if index < len(_TENSOR_RAW_KEYS) else b"t%d" % index


def array_body(arr: np.ndarray, tensors: list[memoryview]) -> tuple[object, ...]:
    """``[dtype, shape, data]`` of ``arr``; a large array's bytes are appended to ``tensors``
    (a memoryview, not a copy) and ``data`` is their index there."""
    dtype_str = _RAW_DTYPE_STRS.get(arr.dtype)  # dtype.str costs 0.5 us; this 0.1 us
    if dtype_str is None:
        return _text_array_body(arr)
    if arr.nbytes < INLINE_MAX_BYTES:
        return (dtype_str, arr.shape, arr.tobytes())
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)  # the one copy we allow on this side
    tensors.append(arr.data.cast("B"))  # memoryview(arr).cast("B")
    return (dtype_str, arr.shape, len(tensors) - 1)


def _text_array_body(arr: np.ndarray) -> tuple[object, ...]:
    """``[dtype, shape, items]`` of a BYTES tensor: object, fixed-width bytes or str arrays."""
    dtype = arr.dtype
    if dtype == _OBJECT_DTYPE:
        items = arr.ravel().tolist()
        for item in items:
            if not isinstance(item, str | bytes):
                raise TypeError(
                    "an object array on the wire must hold only str or bytes (a BYTES "
                    f"tensor), not {type(item).__name__}"
                )
        return ("|O", arr.shape, items)
    if dtype.kind in "SU":
        items = arr.ravel().tolist()
        # As wide as its widest item, not its dtype: a batch's rows keep the batch's width
        # (its longest sentence), which the receiver would allocate for each of their items.
        width = max(map(len, items), default=0) or 1
        return (f"{dtype.str[0]}{dtype.kind}{width}", arr.shape, items)
    raise TypeError(
        f"cannot send a numpy array of dtype {dtype.str!r} ({dtype}): supported are bool, "
        "(u)int8-64, float16/32/64, complex64/128, bytes and str (fixed-width or object)"
    )


def read_array(data: bytes, fields: RawFields) -> np.ndarray:
    """The array whose ext body is ``data``; ``fields`` are the entry's (for ``t<i>``).
    Raises WireError (or msgpack's, numpy's own errors, which the caller reports as a
    malformed array) for anything else."""
    body = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    if type(body) is not list or len(body) != 3:
        raise WireError("array in the envelope is not [dtype, shape, data]")
    dtype_str, shape, content = body
    if type(shape) is not list or len(shape) > _MAX_NDIM:
        raise WireError(f"array shape must be a list of at most {_MAX_NDIM} ints")
    count = 1
    for dim in shape:
        if type(dim) is not int or not 0 <= dim < 1 << 62:
            raise WireError(f"array shape {shape!r} is not a list of non-negative ints")
        count *= dim
    if type(dtype_str) is not str:
        raise WireError("array dtype must be a string")
    dtype = _RAW_DTYPES.get(dtype_str)
    if dtype is not None:
        if type(content) is bytes and len(content) == count * dtype.itemsize:
            # an inline tensor, as _raw_array reads it (read-only: a view over bytes)
            return np.frombuffer(content, dtype=dtype).reshape(shape)
        return _raw_array(fields, dtype, shape, count, content)
    return _text_array(dtype_str, shape, count, content, len(data))


def _raw_array(
    fields: RawFields, dtype: np.dtype, shape: list[int], count: int, content: object
) -> np.ndarray:
    if type(content) is int:
        if content < 0:
            raise WireError(f"tensor field index {content} is negative")
        name = _tensor_raw_key(content)
        buf = cast(AsRead, fields).get(name)
        if buf is None:
            raise WireError(f"tensor field {name.decode()!r} is missing")
        if not isinstance(buf, bytes | bytearray | memoryview):
            raise WireError(f"tensor field {name.decode()!r} must be bytes")
        where = f"tensor field {name.decode()!r}"
    elif type(content) is bytes:
        buf, where = content, "inline tensor"
    else:
        raise WireError(f"array data must be a field index or bytes, not {type(content).__name__}")
    nbytes = buf.nbytes if isinstance(buf, memoryview) else len(buf)
    if nbytes != count * dtype.itemsize:
        raise WireError(
            f"{where} holds {nbytes} bytes, but dtype {dtype.str} and shape {shape} "
            f"need {count * dtype.itemsize}"
        )
    arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
    if type(buf) is not bytes:  # over bytes (what Redis returns) it is read-only already
        arr.flags.writeable = False
    return arr


def _text_array(
    dtype_str: str, shape: list[int], count: int, content: object, envelope_size: int
) -> np.ndarray:
    """A BYTES tensor (object, fixed-width bytes or str) from its flattened elements."""
    if dtype_str != "|O" and not _TEXT_DTYPE_RE.fullmatch(dtype_str):
        raise WireError(f"array dtype {dtype_str!r} is not one Conveyor sends")
    if type(content) is not list or len(content) != count:
        raise WireError(f"BYTES tensor of shape {shape} must carry a list of {count} elements")
    wanted: type = str if dtype_str[1] == "U" else bytes
    for item in content:
        if not (type(item) is str or type(item) is bytes) or (
            dtype_str != "|O" and type(item) is not wanted
        ):
            raise WireError(f"BYTES tensor of dtype {dtype_str} holds a {type(item).__name__}")
    if dtype_str == "|O":
        arr = np.empty(count, dtype=_OBJECT_DTYPE)
        arr[:] = content
        return arr.reshape(shape)
    dtype = np.dtype(dtype_str)
    # A wide dtype over short strings would let a small envelope allocate without bound.
    if count * dtype.itemsize > 64 * envelope_size + (1 << 16):
        raise WireError(
            f"BYTES tensor of dtype {dtype_str} and shape {shape} is out of proportion to "
            f"its {envelope_size}-byte description"
        )
    return np.array(content, dtype=dtype).reshape(shape)
