"""``DatetimeCodec`` ("datetime"): a list of datetimes, as ISO 8601 strings in a BYTES tensor."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from conveyor.codecs.base import InputCodec, register_input_codec
from conveyor.codecs.errors import CodecError
from conveyor.codecs.lists import _flat_elements, is_list_of
from conveyor.codecs.utils import InputOrOutput, _describe, _require_bytes, bytes_column
from conveyor.types import RequestInput, ResponseOutput

__all__ = ("DatetimeCodec",)

_DatetimeStrCodec = "ascii"


def _encode_datetime(name: str, idx: int, elem: object, use_bytes: bool) -> bytes | str:
    if isinstance(elem, datetime):
        iso = elem.isoformat()
    elif isinstance(elem, str):
        iso = elem  # as MLServer: taken to be ISO-encoded already
    else:
        raise CodecError(
            f"DatetimeCodec encodes a list of datetime (or ISO str); element {idx} of '{name}' "
            f"is {type(elem).__name__}",
            name=name,
        )
    return iso.encode("utf-8") if use_bytes else iso  # ISO 8601 is ASCII; utf-8 cannot fail


def _decode_elements(input_or_output: InputOrOutput) -> list[datetime]:
    _require_bytes(input_or_output, DatetimeCodec.ContentType)
    decoded = []
    for idx, elem in enumerate(_flat_elements(input_or_output.data.root)):
        try:
            text = elem.decode(_DatetimeStrCodec) if isinstance(elem, bytes) else elem
            if not isinstance(text, str):
                raise TypeError(f"expected bytes or str, got {type(elem).__name__}")
            decoded.append(datetime.fromisoformat(text))
        except (TypeError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            raise CodecError(
                f"element {idx} of {_describe(input_or_output)} is not an ISO 8601 datetime "
                f"({elem!r}): {exc}",
                name=input_or_output.name,
            ) from exc
    return decoded


def _encode_elements(name: str, payload: Any, use_bytes: bool) -> list[bytes | str]:
    if not isinstance(payload, list | tuple):
        raise CodecError(
            f"DatetimeCodec encodes a list of datetime, got {type(payload).__name__} for '{name}'",
            name=name,
        )
    return [_encode_datetime(name, idx, elem, use_bytes) for idx, elem in enumerate(payload)]


@register_input_codec
class DatetimeCodec(InputCodec):
    """Encodes a list of ``datetime`` as ISO 8601 strings in a BYTES input (output)."""

    ContentType = "datetime"
    TypeHint = list[str | datetime]

    @classmethod
    def can_encode(cls, payload: object) -> bool:
        return is_list_of(payload, datetime)

    @classmethod
    def encode_output(
        cls, name: str, payload: list[str | datetime], use_bytes: bool = True, **kwargs: Any
    ) -> ResponseOutput:
        """Shape ``[N, 1]``; elements are ASCII ``bytes`` (``str`` with ``use_bytes=False``)."""
        data = _encode_elements(name, payload, use_bytes)
        return bytes_column(ResponseOutput, name, data, cls.ContentType)

    @classmethod
    def decode_output(cls, response_output: ResponseOutput) -> list[datetime]:
        return _decode_elements(response_output)

    @classmethod
    def encode_input(
        cls, name: str, payload: list[str | datetime], use_bytes: bool = True, **kwargs: Any
    ) -> RequestInput:
        data = _encode_elements(name, payload, use_bytes)
        return bytes_column(RequestInput, name, data, cls.ContentType)

    @classmethod
    def decode_input(cls, request_input: RequestInput) -> list[datetime]:
        """Parses each element with ``datetime.fromisoformat``; raises ``CodecError``."""
        return _decode_elements(request_input)
