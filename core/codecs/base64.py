"""``Base64Codec`` ("base64"): a list of binary blobs, sent base64-encoded in a BYTES tensor."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from conveyor.codecs.base import InputCodec, register_input_codec
from conveyor.codecs.errors import CodecError
from conveyor.codecs.lists import _flat_elements, is_list_of
from conveyor.codecs.utils import InputOrOutput, _describe, _require_bytes, bytes_column
from conveyor.types import RequestInput, ResponseOutput

__all__ = ("Base64Codec",)

_Base64StrCodec = "ascii"


def _encode_base64(name: str, idx: int, elem: object, use_bytes: bool) -> bytes | str:
    if isinstance(elem, str):
        elem = elem.encode("utf-8")  # MLServer uses ASCII, which fails on any other text
    if not isinstance(elem, bytes):
        raise CodecError(
            f"Base64Codec encodes a list of bytes; element {idx} of '{name}' is "
            f"{type(elem).__name__}",
            name=name,
        )
    encoded = base64.b64encode(elem)
    return encoded if use_bytes else encoded.decode(_Base64StrCodec)


def _decode_base64(elem: bytes | str) -> bytes:
    as_bytes = elem.encode("utf-8") if isinstance(elem, str) else elem
    try:
        return base64.b64decode(as_bytes, validate=True)
    except binascii.Error:
        # As MLServer: an element that is not valid base64 is taken to be the raw bytes already
        # (JSON clients often send the blob as text).
        return as_bytes


def _decode_elements(input_or_output: InputOrOutput) -> list[bytes]:
    _require_bytes(input_or_output, Base64Codec.ContentType)
    decoded = []
    for idx, elem in enumerate(_flat_elements(input_or_output.data.root)):
        if not isinstance(elem, bytes | str):
            raise CodecError(
                f"element {idx} of {_describe(input_or_output)} is {type(elem).__name__}; "
                "base64 data must be bytes or str",
                name=input_or_output.name,
            )
        decoded.append(_decode_base64(elem))
    return decoded


def _encode_elements(name: str, payload: Any, use_bytes: bool) -> list[bytes | str]:
    if not isinstance(payload, list | tuple):
        raise CodecError(
            f"Base64Codec encodes a list of bytes, got {type(payload).__name__} for '{name}'",
            name=name,
        )
    return [_encode_base64(name, idx, elem, use_bytes) for idx, elem in enumerate(payload)]


@register_input_codec
class Base64Codec(InputCodec):
    """Encodes a list of ``bytes`` as base64 in a BYTES input (output) of shape ``[N, 1]``."""

    ContentType = "base64"
    TypeHint = list[bytes]

    @classmethod
    def can_encode(cls, payload: object) -> bool:
        return is_list_of(payload, bytes)

    @classmethod
    def encode_output(
        cls, name: str, payload: list[bytes], use_bytes: bool = True, **kwargs: Any
    ) -> ResponseOutput:
        """Each element base64-encoded, as ``bytes`` (``str`` with ``use_bytes=False``)."""
        data = _encode_elements(name, payload, use_bytes)
        return bytes_column(ResponseOutput, name, data, cls.ContentType)

    @classmethod
    def decode_output(cls, response_output: ResponseOutput) -> list[bytes]:
        return _decode_elements(response_output)

    @classmethod
    def encode_input(
        cls, name: str, payload: list[bytes], use_bytes: bool = True, **kwargs: Any
    ) -> RequestInput:
        data = _encode_elements(name, payload, use_bytes)
        return bytes_column(RequestInput, name, data, cls.ContentType)

    @classmethod
    def decode_input(cls, request_input: RequestInput) -> list[bytes]:
        """The base64-decoded elements; raises ``CodecError`` for non-string elements."""
        return _decode_elements(request_input)
