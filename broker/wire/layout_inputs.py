"""What a read's layout (``wire.layout``) keeps of its request: the state of its models (each
later request gets copies of its own) and each input's place in the envelope, with what lies
there: an array's bytes, or a BYTES input's items."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

from conveyor.batch_rows import _DTYPES
from conveyor.broker.wire.layout_parts import BIN, items_kind, items_span
from conveyor.types import Parameters, RequestInput

__all__ = ("Input", "State", "input_of", "laid_input", "parameters_of", "state_of")

_new = object.__new__
_set = object.__setattr__

_LEAVES = frozenset((str, int, float, bool, bytes, type(None)))
_OWN = ("inputs", "data", "parameters")

# A model's state, copied (its fields but for data, its fields set, its extra fields).
State = tuple[dict[str, Any], frozenset[str], "dict[str, Any] | None"]


def state_of(model: Any) -> State | None:
    """A copy of a model's state, if its fields (but the models ``inputs``, ``data`` and
    ``parameters``, which each request gets its own of) are all immutable leaves, or a shape
    (a list of ints, copied for each request), so that the requests built from it may share
    them; else None."""
    values = dict(model.__dict__)
    extra = model.__pydantic_extra__
    for name, value in values.items():
        if name == "shape":
            if type(value) is not list or any(type(item) is not int for item in value):
                return None
        elif name not in _OWN and type(value) not in _LEAVES:
            return None
    if extra and any(type(value) not in _LEAVES for value in extra.values()):
        return None
    for name in _OWN:
        if name in values:
            values[name] = None  # filled in for each request
    return values, frozenset(model.__pydantic_fields_set__), None if extra is None else dict(extra)


def parameters_of(state: State) -> Parameters:
    """Parameters from a copied state, a request's own."""
    built: Parameters = _new(Parameters)
    values = state[0].copy()
    _set(built, "__dict__", values)
    _set(built, "__pydantic_fields_set__", set(state[1]))
    extra = state[2]
    _set(built, "__pydantic_extra__", None if extra is None else dict(extra))
    _set(built, "__pydantic_private__", None)
    return built


# An input's place in a layout: its span (the layout's envelope's), its array's dtype and
# shape (None for a BYTES input's items, and their kind: BIN or STR), its state and its
# parameters' state.
Input = tuple[int, int, "np.dtype[Any] | None", tuple[int, ...], bool, State, "State | None"]


def input_of(envelope: bytes, part: RequestInput) -> Input | None:
    """Where an input's data lies in the envelope, and what it is: an array's bytes (a numeric
    array inline), or a BYTES input's items (a flat list of bytes only or str only, one
    for each element of its shape); None for anything else."""
    parameters = part.parameters
    if type(part) is not RequestInput or type(parameters) not in (Parameters, type(None)):
        return None
    state = state_of(part)
    parameters_state = None if parameters is None else state_of(parameters)
    if state is None or (parameters is not None and parameters_state is None):
        return None
    root = part.data.root
    if type(root) is np.ndarray:
        if root.dtype.kind not in "biufc" or not root.nbytes:
            return None
        data = root.tobytes()
        # the array's ext body as the wire packs it (``arrays.array_body``), its bytes last
        body = msgpack.packb([root.dtype.str, list(root.shape), data], use_bin_type=True)
        found = envelope.find(body)
        if found < 0 or envelope.find(body, found + 1) >= 0:
            return None  # packed otherwise, or not in one place only
        end = found + len(body)
        return end - len(data), end, root.dtype, root.shape, BIN, state, parameters_state
    kind = items_kind(root)
    if part.datatype != "BYTES" or kind is None or len(root) != math.prod(part.shape):
        return None
    span = items_span(envelope, root)
    if span is None:
        return None
    return span[0], span[1], None, tuple(part.shape), kind, state, parameters_state


def laid_input(part: RequestInput, dtype: np.dtype[Any] | None) -> bool:
    """Whether merging takes the input's data as the wire has it: an array of its datatype's
    own dtype and its shape (``batching._array_of``), or a BYTES input's items."""
    root = part.data.root
    if dtype is None:
        return bool(part.shape)
    return bool(
        root.ndim and root.dtype == _DTYPES.get(part.datatype) and list(root.shape) == part.shape
    )
