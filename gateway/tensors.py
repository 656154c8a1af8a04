"""Raw tensor bytes <-> numpy arrays, for every V2 datatype: one conversion for both transports.

Triton's binary tensor extension (REST: ``binary_data_size``, ``Inference-Header-Content-Length``)
and the gRPC protocol's ``raw_input_contents`` / ``raw_output_contents`` carry a tensor as its
elements' bytes, row-major, with no header:

- fixed-size datatypes (BOOL as one byte, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64):
  little-endian, ``prod(shape) * itemsize`` bytes;
- BYTES: each element as a 4-byte little-endian length, then that many bytes.

Decoded, a fixed-size tensor is a read-only view over the caller's bytes (no copy), so it goes
to the fleet as a numpy array (a raw field on the wire), never as a list. A BYTES tensor becomes
an ``object`` array of ``bytes`` (an ``S`` array would drop trailing NUL bytes). BF16 is not
a V2 datatype of Conveyor's codecs (``conveyor.types.Datatype``): it is refused, with the list.

Errors are :class:`TensorError`, a :class:`~conveyor.gateway.errors.BadRequest` whose message
names the tensor and what does not fit: the gateway answers 400 / INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from conveyor.gateway.errors import BadRequest

__all__ = ("DTYPES", "TensorError", "from_raw", "to_raw")

# The little-endian dtype of each fixed-size datatype (the raw format's byte order).
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_KNOWN = ", ".join([*DTYPES, "BYTES"])
_LENGTH = struct.Struct("<I")


class TensorError(BadRequest):
    """A tensor's raw bytes do not fit its datatype and shape (or its data cannot be sent)."""


def _count(name: str, shape: Sequence[int]) -> int:
    if any(type(dim) is not int or dim < 0 for dim in shape):
        raise TensorError(f"tensor {name!r} has shape {list(shape)}: dimensions must be >= 0")
    return math.prod(shape)


def _dtype(name: str, datatype: str) -> np.dtype[Any] | None:
    """The dtype of a fixed-size datatype, None for BYTES; raises for an unknown one."""
    if datatype == "BYTES":
        return None
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise TensorError(f"tensor {name!r} has datatype {datatype!r}; supported: {_KNOWN}")
    return dtype


def from_raw(
    name: str, datatype: str, shape: Sequence[int], raw: bytes | bytearray | memoryview
) -> npt.NDArray[Any]:
    """The array of shape ``shape`` whose raw V2 bytes are ``raw``.

    A fixed-size datatype gives a read-only view over ``raw`` (no copy); BYTES gives an
    ``object`` array of ``bytes``. Raises :class:`TensorError` when the size does not match.
    """
    count = _count(name, shape)
    dtype = _dtype(name, datatype)
    if dtype is None:
        return _bytes_from_raw(name, shape, count, memoryview(raw))
    if len(raw) != count * dtype.itemsize:
        raise TensorError(
            f"tensor {name!r} ({datatype}, shape {list(shape)}) needs "
            f"{count * dtype.itemsize} bytes, but {len(raw)} came"
        )
    array = np.frombuffer(raw, dtype=dtype)
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))  # a big-endian host: one copy
    return array.reshape(shape)


def _bytes_from_raw(
    name: str, shape: Sequence[int], count: int, raw: memoryview
) -> npt.NDArray[Any]:
    items: list[bytes] = []
    offset, end = 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise TensorError(
                f"tensor {name!r} (BYTES) ends inside an element's 4-byte length at byte {offset}"
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > end:
            raise TensorError(
                f"tensor {name!r} (BYTES): element {len(items)} says {length} bytes, but only "
                f"{end - offset} remain"
            )
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise TensorError(
            f"tensor {name!r} (BYTES, shape {list(shape)}) needs {count} element(s), "
            f"but its bytes hold {len(items)}"
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


def to_raw(name: str, datatype: str, shape: Sequence[int], data: object) -> bytes:
    """The raw V2 bytes of a tensor whose elements are ``data`` (a numpy array, or a list,
    possibly nested, as a model may answer), converted to ``datatype`` when they differ.

    Raises :class:`TensorError` when the elements do not fit ``datatype`` or ``shape``.
    """
    count = _count(name, shape)
    dtype = _dtype(name, datatype)
    if dtype is None:
        return _bytes_to_raw(name, shape, count, data)
    try:
        with np.errstate(over="raise", invalid="raise"):
            array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError, FloatingPointError) as exc:
        raise TensorError(f"tensor {name!r} has data that does not fit {datatype}: {exc}") from exc
    if array.size != count:
        raise TensorError(
            f"tensor {name!r} has {array.size} element(s), which do not fit shape {list(shape)}"
        )
    return array.tobytes()  # C order, whatever the array's layout


def _elements(data: object) -> list[object]:
    if isinstance(data, np.ndarray):
        return list(data.ravel().tolist())
    if isinstance(data, bytes | str):
        return [data]
    flat: list[object] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list | tuple):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def _bytes_to_raw(name: str, shape: Sequence[int], count: int, data: object) -> bytes:
    elements = _elements(data)
    if len(elements) != count:
        raise TensorError(
            f"tensor {name!r} has {len(elements)} element(s), which do not fit shape {list(shape)}"
        )
    parts: list[bytes] = []
    for idx, element in enumerate(elements):
        if isinstance(element, str):
            element = element.encode()
        elif not isinstance(element, bytes):
            raise TensorError(
                f"tensor {name!r} is BYTES, but element {idx} is {type(element).__name__}; "
                "expected bytes or str"
            )
        parts.append(_LENGTH.pack(len(element)))
        parts.append(element)
    return b"".join(parts)
