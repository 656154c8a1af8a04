"""Payloads: a V2 type or a plain value as the ``[tag, body]`` pair an envelope holds.

Both ways bypass pydantic's own machinery where it was measured slow: a model is dumped by
reading its fields directly (:func:`_dump_model`, ~4x faster than ``model_dump`` for a small
request) and rebuilt with its validator called directly (``model_validate`` without its
wrapper). Numpy arrays stay where they are, for the envelope's packer (``arrays``).
"""

from __future__ import annotations

from typing import cast

import numpy as np
import pydantic

from conveyor.batching import Rows
from conveyor.broker.wire.schema import Payload
from conveyor.compiled import caused_by
from conveyor.errors import WireError
from conveyor.types import InferenceRequest, InferenceResponse, MetadataModelResponse

__all__ = ("TAG_PLAIN", "decode_payload", "encode_payload", "encode_rows_payload")

TAG_PLAIN = "plain"
_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "InferenceRequest": InferenceRequest,
    "InferenceResponse": InferenceResponse,
    "MetadataModelResponse": MetadataModelResponse,
}
_TAGS: dict[type, str] = {cls: tag for tag, cls in _MODELS.items()}
# cls.model_validate(body), without its wrapper's ~1.5 us: the same validator, same arguments.
_VALIDATORS = {tag: cls.__pydantic_validator__.validate_python for tag, cls in _MODELS.items()}


def _dump_model(model: pydantic.BaseModel) -> dict[str, object]:
    """``model_dump(exclude_unset=True, exclude_none=True)`` without pydantic's serializer.

    About 4x faster for a small request; numpy arrays stay where they are for the Packer.
    """
    out: dict[str, object] = {}
    fields_set = model.__pydantic_fields_set__
    kinds = _KINDS
    for name, value in model.__dict__.items():
        if value is not None and name in fields_set:
            # Most values are str/int leaves or lists of them (a shape): no call for those.
            kind = kinds.get(type(value))
            if kind == _LEAF:
                out[name] = value
            elif kind == _LIST:
                out[name] = [
                    item if kinds.get(type(item)) == _LEAF else _dump_value(item)
                    for item in cast("list[object]", value)
                ]
            else:
                out[name] = _dump_value(value)
    extra = model.__pydantic_extra__
    if extra:
        out.update(extra)
    return out


# How _dump_value treats a value, by its exact type: isinstance against pydantic's classes goes
# through ABCMeta (~0.3 us a check), a dict lookup does not.
_LEAF, _ROOT, _MODEL, _LIST = range(4)
_KINDS: dict[type, int] = dict.fromkeys((str, int, float, bool, bytes, dict, np.ndarray), _LEAF)
_KINDS[list] = _LIST


def _kind(cls: type) -> int:
    kind = _KINDS.get(cls)
    if kind is None:
        if issubclass(cls, pydantic.RootModel):
            kind = _ROOT
        elif issubclass(cls, pydantic.BaseModel):
            kind = _MODEL
        else:
            kind = _LEAF  # left to the Packer: its default() handles or refuses it
        _KINDS[cls] = kind  # one entry per class: bounded by the program's classes
    return kind


def _dump_value(value: object) -> object:
    kind = _kind(type(value))
    if kind == _LEAF:
        return value
    if kind == _ROOT:  # TensorData: its list or array, as it is
        return cast("pydantic.RootModel[object]", value).root
    if kind == _MODEL:
        return _dump_model(cast(pydantic.BaseModel, value))
    return [_dump_value(item) for item in cast("list[object]", value)]


def encode_payload(value: Payload) -> list[object]:
    tag = _TAGS.get(type(value))
    if tag is not None:
        return [tag, _dump_model(cast(pydantic.BaseModel, value))]
    if isinstance(value, pydantic.BaseModel):
        for cls, tag in _TAGS.items():
            if isinstance(value, cls):  # a subclass travels as its V2 base type
                return [tag, _dump_model(value)]
        raise TypeError(
            f"cannot send a {type(value).__qualname__}: the V2 types on the wire are "
            f"{', '.join(_MODELS)}; send anything else as plain values"
        )
    return [TAG_PLAIN, value]


def encode_rows_payload(rows: Rows, response_id: str | None) -> list[object]:
    """``encode_payload(rows.build(response_id))``, without building the response: its fields
    as :func:`_dump_model` dumps what ``Rows.build`` makes (every field set; those not None),
    each output's data the view of its rows. ``tests/unit/test_wire_rows.py`` compares them."""
    response, start, size = rows.response, rows.start, rows.size
    end = start + size
    outputs: list[object] = []
    for output, array in zip(response.outputs, rows.arrays, strict=True):
        part: dict[str, object] = {}
        _put(part, "name", output.name)
        part["shape"] = [size, *array.shape[1:]]
        _put(part, "datatype", output.datatype)
        _put(part, "parameters", output.parameters)
        part["data"] = array[start:end]
        outputs.append(part)
    body: dict[str, object] = {}
    _put(body, "model_name", response.model_name)
    _put(body, "model_version", response.model_version)
    _put(body, "id", response_id)
    _put(body, "parameters", response.parameters)
    body["outputs"] = outputs
    return ["InferenceResponse", body]


def _put(out: dict[str, object], name: str, value: object) -> None:
    if value is not None:
        out[name] = value if _KINDS.get(type(value)) == _LEAF else _dump_value(value)


def decode_payload(value: object, where: str) -> Payload:
    if type(value) is not list or len(value) != 2 or type(value[0]) is not str:
        raise WireError(f"{where} is not a [tag, body] pair")
    tag, body = value
    if tag == TAG_PLAIN:
        return cast(Payload, body)
    validate = _VALIDATORS.get(tag)
    if validate is None:
        raise WireError(f"{where} has unknown payload tag {tag!r}")
    if type(body) is not dict:
        raise WireError(f"{where} ({tag}) must be a map of its fields")
    try:
        return cast(Payload, validate(body))
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"]) or "(root)"
        count = exc.error_count()
        text = f"{where} is not a valid {tag}: {loc}: {first['msg']} ({count} error(s))"
        raise caused_by(WireError(text), None) from None
