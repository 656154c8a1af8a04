"""Codecs: MLServer's ``mlserver.codecs``, with the same names, content types and rules.

The one difference: tensor data stays numpy. ``NumpyCodec`` puts the array itself into ``data``
and decodes an array back with a reshape (a view), so a large tensor never becomes a Python list
between the client and the model unless it crosses a JSON edge.

``PandasCodec`` ("pd") is there when pandas is installed; it is imported on first use (importing
pandas takes most of a second), and ``conveyor.codecs`` itself works without pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.codecs.base import (
    InputCodec,
    InputCodecLike,
    RequestCodec,
    RequestCodecLike,
    _codec_registry,
    find_input_codec,
    find_request_codec,
    register_input_codec,
    register_request_codec,
)
from conveyor.codecs.base64 import Base64Codec
from conveyor.codecs.datetime import DatetimeCodec
from conveyor.codecs.decorator import decode_args
from conveyor.codecs.errors import CodecError, CodecNotFound
from conveyor.codecs.numpy import NumpyCodec, NumpyRequestCodec
from conveyor.codecs.string import StringCodec, StringRequestCodec
from conveyor.codecs.utils import (
    DecodedParameterName,
    decode_inference_request,
    decode_request_input,
    encode_inference_response,
    encode_response_output,
    get_decoded,
    get_decoded_or_raw,
    has_decoded,
)

if TYPE_CHECKING:
    from conveyor.codecs.pandas import PandasCodec

__all__ = (
    "Base64Codec",
    "CodecError",
    "CodecNotFound",
    "DatetimeCodec",
    "DecodedParameterName",
    "InputCodec",
    "InputCodecLike",
    "NumpyCodec",
    "NumpyRequestCodec",
    "PandasCodec",
    "RequestCodec",
    "RequestCodecLike",
    "StringCodec",
    "StringRequestCodec",
    "decode_args",
    "decode_inference_request",
    "decode_request_input",
    "encode_inference_response",
    "encode_response_output",
    "find_input_codec",
    "find_request_codec",
    "get_decoded",
    "get_decoded_or_raw",
    "has_decoded",
    "register_input_codec",
    "register_request_codec",
)

_codec_registry.register_optional_codec("pd", "conveyor.codecs.pandas", requires="pandas")


def __getattr__(name: str) -> Any:
    if name == "PandasCodec":
        try:
            from conveyor.codecs.pandas import PandasCodec
        except ImportError as exc:
            raise ImportError(
                "conveyor.codecs.PandasCodec needs pandas: pip install 'conveyor[pandas]'"
            ) from exc
        globals()["PandasCodec"] = PandasCodec
        return PandasCodec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
