"""``StringCodec`` ("str"): a list of Python strings as a BYTES tensor of shape ``[N, 1]``."""

from __future__ import annotations

from typing import Any, TypeAlias

from conveyor.codecs.base import InputCodec, register_input_codec, register_request_codec
from conveyor.codecs.errors import CodecError
from conveyor.codecs.lists import _flat_elements, is_list_of
from conveyor.codecs.utils import (
    InputOrOutput,
    SingleInputRequestCodec,
    _describe,
    _require_bytes,
    bytes_column,
)
from conveyor.types import RequestInput, ResponseOutput

__all__ = ("StringCodec", "StringRequestCodec", "decode_str", "encode_str")

_DefaultStrCodec = "utf-8"

# The elements a BYTES tensor may carry: JSON gives str, msgpack and gRPC give bytes, and MLServer
# passes None through (e.g. a missing value in a pandas column).
_Element: TypeAlias = bytes | str | None


def encode_str(elem: str) -> bytes:
    """``elem`` as UTF-8."""
    return elem.encode(_DefaultStrCodec)


def decode_str(encoded: _Element, str_codec: str = _DefaultStrCodec) -> str | None:
    """``encoded`` as ``str``: bytes are decoded, str and ``None`` returned as they are.

    Raises ``UnicodeDecodeError`` for undecodable bytes and ``TypeError`` for other types (where
    MLServer returns ``""``).
    """
    if encoded is None or isinstance(encoded, str):
        return encoded
    if isinstance(encoded, bytes):
        return encoded.decode(str_codec)
    raise TypeError(f"expected bytes or str, got {type(encoded).__name__}")


def _decode_strings(input_or_output: InputOrOutput) -> list[str]:
    _require_bytes(input_or_output, StringCodec.ContentType)
    decoded: list[Any] = []
    for idx, elem in enumerate(_flat_elements(input_or_output.data.root)):
        try:
            decoded.append(decode_str(elem))
        except (TypeError, UnicodeDecodeError) as exc:
            raise CodecError(
                f"element {idx} of {_describe(input_or_output)} is not a UTF-8 string: {exc}",
                name=input_or_output.name,
            ) from exc
    # None elements pass through, as in MLServer, though the annotation says list[str].
    return decoded


def _encode_strings(name: str, payload: list[str], use_bytes: bool) -> list[Any]:
    if not isinstance(payload, list | tuple):
        raise CodecError(
            f"StringCodec encodes a list of str, got {type(payload).__name__} for '{name}'",
            name=name,
        )
    for idx, elem in enumerate(payload):
        if not isinstance(elem, str):
            raise CodecError(
                f"StringCodec encodes a list of str; element {idx} of '{name}' is "
                f"{type(elem).__name__}",
                name=name,
            )
    return [encode_str(elem) for elem in payload] if use_bytes else list(payload)


@register_input_codec
class StringCodec(InputCodec):
    """Encodes a list of Python strings as a BYTES input (output), one string per row."""

    ContentType = "str"
    TypeHint = list[str]

    @classmethod
    def can_encode(cls, payload: object) -> bool:
        return is_list_of(payload, str)

    @classmethod
    def encode_output(
        cls, name: str, payload: list[str], use_bytes: bool = True, **kwargs: Any
    ) -> ResponseOutput:
        """Data is UTF-8 ``bytes`` (``str`` with ``use_bytes=False``), shape ``[N, 1]``."""
        data = _encode_strings(name, payload, use_bytes)
        return bytes_column(ResponseOutput, name, data, cls.ContentType)

    @classmethod
    def decode_output(cls, response_output: ResponseOutput) -> list[str]:
        return _decode_strings(response_output)

    @classmethod
    def encode_input(
        cls, name: str, payload: list[str], use_bytes: bool = True, **kwargs: Any
    ) -> RequestInput:
        data = _encode_strings(name, payload, use_bytes)
        return bytes_column(RequestInput, name, data, cls.ContentType)

    @classmethod
    def decode_input(cls, request_input: RequestInput) -> list[str]:
        """The elements as ``str``, flattened (a single element counts as a list of one)."""
        return _decode_strings(request_input)


@register_request_codec
class StringRequestCodec(SingleInputRequestCodec):
    """Decodes the request's single input (response's single output) as a list of strings."""

    InputCodec = StringCodec
    ContentType = StringCodec.ContentType
    TypeHint = list[str]
