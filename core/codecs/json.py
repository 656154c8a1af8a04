"""JSON helpers: elements of a BYTES tensor that hold JSON (``PandasCodec``'s "pd_json" columns),
and JSON that tolerates ``bytes`` and numpy values. Standard library ``json`` only."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from conveyor.codecs.errors import CodecError
from conveyor.codecs.lists import _flat_elements
from conveyor.codecs.string import decode_str
from conveyor.codecs.utils import InputOrOutput, _describe

__all__ = (
    "JSONEncoderWithArray",
    "decode_from_bytelike_json_to_dict",
    "decode_json_input_or_output",
    "encode_to_json",
    "encode_to_json_bytes",
)


class _BytesJSONEncoder(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        if isinstance(o, bytes):
            # Best effort, as MLServer: bytes are sent as the text they hold.
            return decode_str(o)
        return super().default(o)


class JSONEncoderWithArray(json.JSONEncoder):
    """A JSON encoder that also writes numpy arrays (as lists) and numpy scalars."""

    def default(self, o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.bool_):
            return bool(o)
        return super().default(o)


def encode_to_json_bytes(v: Any) -> bytes:
    """Compact UTF-8 JSON of ``v``; ``bytes`` values are written as text."""
    return json.dumps(
        v, ensure_ascii=False, allow_nan=False, separators=(",", ":"), cls=_BytesJSONEncoder
    ).encode("utf-8")


def decode_from_bytelike_json_to_dict(v: bytes | str) -> Any:
    """Parses JSON from ``bytes`` or ``str``."""
    return json.loads(v)


def encode_to_json(v: Any, use_bytes: bool = True) -> str | bytes:
    """Compact JSON of ``v`` (numpy values allowed), as UTF-8 ``bytes`` or as ``str``."""
    encoded = json.dumps(
        v, ensure_ascii=False, allow_nan=False, separators=(",", ":"), cls=JSONEncoderWithArray
    )
    return encoded.encode("utf-8") if use_bytes else encoded


def decode_json_input_or_output(input_or_output: InputOrOutput) -> list[Any]:
    """Parses each element of a BYTES tensor as JSON; raises ``CodecError`` naming the tensor."""
    decoded = []
    for idx, elem in enumerate(_flat_elements(input_or_output.data.root)):
        try:
            decoded.append(json.loads(elem))
        except (TypeError, ValueError) as exc:
            raise CodecError(
                f"element {idx} of {_describe(input_or_output)} is not JSON: {exc}",
                name=input_or_output.name,
            ) from exc
    return decoded
