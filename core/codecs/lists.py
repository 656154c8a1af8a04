"""Helpers for BYTES payloads that may be one string-like element or a list of them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeAlias

import numpy as np

__all__ = ("ListElement", "ListPayload", "as_list", "is_list_of")

ListElement: TypeAlias = bytes | str
ListPayload: TypeAlias = ListElement | list[ListElement]


def is_list_of(payload: object, instance_type: type | tuple[type, ...]) -> bool:
    """Whether ``payload`` is a ``list`` whose elements are all ``instance_type``.

    An empty list counts, as in MLServer.
    """
    return isinstance(payload, list) and all(isinstance(elem, instance_type) for elem in payload)


def as_list(payload: Any) -> Iterator[Any]:
    """Yields the elements of a list, or ``payload`` itself when it is a single element."""
    if isinstance(payload, list):
        yield from payload
    else:
        yield payload


def _flat_elements(payload: Any) -> list[Any]:
    """The elements of a BYTES tensor's data, in row-major order.

    ``payload`` is a single element, a (possibly nested) list, or a numpy array; MLServer only
    looks at the top level, which turns ``[["a"], ["b"]]`` into garbage.
    """
    if isinstance(payload, np.ndarray):
        flat: list[Any] = payload.ravel().tolist()
        return flat
    if not isinstance(payload, list | tuple):
        return [payload]
    if not any(isinstance(elem, list | tuple | np.ndarray) for elem in payload):
        return list(payload)
    out: list[Any] = []
    for elem in payload:
        out.extend(_flat_elements(elem))
    return out
