"""Tensors compare by value: a numpy ``data`` equals the same tensor held as a list.

MLServer's tensors always hold lists, so ``==`` on its V2 types compares lists. Here ``data``
may be a numpy array (kept as it is, never copied into a list), and ``==`` on an array gives an
array, not a bool: pydantic's ``__eq__`` then fails with "the truth value of an array ... is
ambiguous". So when either side holds an array, both are read as what their V2 JSON would
carry: the elements in row-major order, a float NaN as ``null`` (as MLServer's encoders write
it), and MLServer's one-buffer form of a BYTES tensor (``[array.tobytes()]``) as its elements.
Two lists still compare exactly as in MLServer (a nested list differs from a flat one).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ("tensor_data_equal", "values_equal")


def tensor_data_equal(left: Any, right: Any, count: int | None = None) -> bool:
    """Whether two tensors' ``data`` hold the same elements.

    ``count``: the number of elements the shape says, when the comparison knows the shape
    (it reads MLServer's one-buffer BYTES form); ``None`` otherwise.
    """
    left_array, right_array = isinstance(left, np.ndarray), isinstance(right, np.ndarray)
    if not (left_array or right_array):
        return bool(left == right)
    if left_array and right_array and left.dtype.kind in "biuf" and right.dtype.kind in "biuf":
        # Both numeric arrays: numpy compares them without building lists.
        return left.size == right.size and bool(
            np.array_equal(left.ravel(), right.ravel(), equal_nan=True)
        )
    left_items, right_items = _elements(left, count), _elements(right, count)
    return len(left_items) == len(right_items) and all(
        _same(a, b) for a, b in zip(left_items, right_items, strict=True)
    )


def _elements(data: Any, count: int | None) -> list[Any]:
    if isinstance(data, np.ndarray):
        items: list[Any] = data.ravel().tolist()
    elif isinstance(data, list | tuple):
        items = []
        _flatten(data, items)
    else:
        items = [data]
    if (
        count is not None
        and 0 < len(items) < count
        and all(isinstance(item, bytes) for item in items)
    ):
        buffer = b"".join(items)
        width, rest = divmod(len(buffer), count)
        if width and not rest:  # MLServer's fixed-width elements in one buffer
            # numpy drops an `S` element's trailing NULs, so this side drops them too.
            return [buffer[i : i + width].rstrip(b"\0") for i in range(0, len(buffer), width)]
    return items


def _flatten(data: list[Any] | tuple[Any, ...], into: list[Any]) -> None:
    for item in data:
        if isinstance(item, list | tuple):
            _flatten(item, into)
        elif isinstance(item, np.ndarray):
            into.extend(item.ravel().tolist())
        else:
            into.append(item)


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _same(left: Any, right: Any) -> bool:
    if _is_null(left) or _is_null(right):
        return _is_null(left) and _is_null(right)
    if isinstance(left, np.ndarray) or isinstance(right, np.ndarray):
        return False  # an element that is itself an array (an object array's): not a tensor
    result = left == right
    return isinstance(result, bool | np.bool_) and bool(result)


def values_equal(left: Any, right: Any) -> bool:
    """``==`` of plain values (parameters) that may hold numpy arrays anywhere: an array is
    compared as a tensor, dicts and lists item by item, anything else with ``==``."""
    if isinstance(left, np.ndarray) or isinstance(right, np.ndarray):
        return tensor_data_equal(left, right)
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(values_equal(left[k], right[k]) for k in left)
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        return (
            type(left) is type(right)
            and len(left) == len(right)
            and all(values_equal(a, b) for a, b in zip(left, right, strict=True))
        )
    result = left == right
    return isinstance(result, bool | np.bool_) and bool(result)
