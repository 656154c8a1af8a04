"""The codec interfaces and the registry that finds a codec by content type, type hint or payload.

Codecs are classes with classmethods only, so a codec is passed around as the class itself
(``InputCodecLike`` also allows an instance, as in MLServer). The registry is process-wide because
``@register_input_codec`` / ``@register_request_codec`` (MLServer's API) register at import time.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import types
import typing
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar, TypeAlias, TypeVar

from conveyor.types import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput

__all__ = (
    "InputCodec",
    "InputCodecLike",
    "RequestCodec",
    "RequestCodecLike",
    "find_input_codec",
    "find_input_codec_by_payload",
    "find_input_codec_by_type_hint",
    "find_request_codec",
    "find_request_codec_by_payload",
    "find_request_codec_by_type_hint",
    "register_input_codec",
    "register_request_codec",
)

logger = logging.getLogger(__name__)


class InputCodec:
    """Converts one input (or output) between a Python value and a V2 tensor.

    For conversions that span the whole request (e.g. one DataFrame column per input), implement
    ``RequestCodec`` instead.
    """

    ContentType: ClassVar[str] = ""
    TypeHint: ClassVar[object] = type(None)

    @classmethod
    def can_encode(cls, payload: object) -> bool:
        """Whether this codec can encode ``payload``; the registry's lookup by payload asks this."""
        return False

    @classmethod
    def encode(cls, name: str, payload: Any) -> ResponseOutput:
        """Deprecated alias of ``encode_output``; warns with ``DeprecationWarning``."""
        _warn_deprecated("encode()", "encode_output()")
        return cls.encode_output(name, payload)

    @classmethod
    def encode_output(cls, name: str, payload: Any, **kwargs: Any) -> ResponseOutput:
        """Encodes ``payload`` as the response output ``name``; raises ``CodecError``."""
        raise NotImplementedError

    @classmethod
    def decode_output(cls, response_output: ResponseOutput) -> Any:
        """Decodes a response output; raises ``CodecError``."""
        raise NotImplementedError

    @classmethod
    def encode_input(cls, name: str, payload: Any, **kwargs: Any) -> RequestInput:
        """Encodes ``payload`` as the request input ``name``; raises ``CodecError``."""
        raise NotImplementedError

    @classmethod
    def decode(cls, request_input: RequestInput) -> Any:
        """Deprecated alias of ``decode_input``; warns with ``DeprecationWarning``."""
        _warn_deprecated("decode()", "decode_input()")
        return cls.decode_input(request_input)

    @classmethod
    def decode_input(cls, request_input: RequestInput) -> Any:
        """Decodes a request input; raises ``CodecError``."""
        raise NotImplementedError


class RequestCodec:
    """Converts a whole request (or response) between a Python value and V2 tensors.

    For conversions of a single input, implement ``InputCodec`` instead.
    """

    ContentType: ClassVar[str] = ""
    TypeHint: ClassVar[object] = type(None)

    @classmethod
    def can_encode(cls, payload: object) -> bool:
        """Whether this codec can encode ``payload``; the registry's lookup by payload asks this."""
        return False

    @classmethod
    def encode(
        cls, model_name: str, payload: Any, model_version: str | None = None
    ) -> InferenceResponse:
        """Deprecated alias of ``encode_response``; warns with ``DeprecationWarning``."""
        _warn_deprecated("encode()", "encode_response()")
        return cls.encode_response(model_name, payload, model_version)

    @classmethod
    def encode_response(
        cls, model_name: str, payload: Any, model_version: str | None = None, **kwargs: Any
    ) -> InferenceResponse:
        """Encodes ``payload`` as a response of ``model_name``; raises ``CodecError``."""
        raise NotImplementedError

    @classmethod
    def decode_response(cls, response: InferenceResponse) -> Any:
        """Decodes a whole response; raises ``CodecError``."""
        raise NotImplementedError

    @classmethod
    def encode_request(cls, payload: Any, **kwargs: Any) -> InferenceRequest:
        """Encodes ``payload`` as a request; raises ``CodecError``."""
        raise NotImplementedError

    @classmethod
    def decode(cls, request: InferenceRequest) -> Any:
        """Deprecated alias of ``decode_request``; warns with ``DeprecationWarning``."""
        _warn_deprecated("decode()", "decode_request()")
        return cls.decode_request(request)

    @classmethod
    def decode_request(cls, request: InferenceRequest) -> Any:
        """Decodes a whole request; raises ``CodecError``."""
        raise NotImplementedError


InputCodecLike: TypeAlias = type[InputCodec] | InputCodec
RequestCodecLike: TypeAlias = type[RequestCodec] | RequestCodec

_Codec = TypeVar("_Codec", InputCodecLike, RequestCodecLike)


def _warn_deprecated(old: str, new: str) -> None:
    # MLServer logs "DEPRECATED! ..." at warning level (and a ported runtime's tests may look
    # for that line); the DeprecationWarning also reaches the caller's own tests.
    message = f"The {old} method is now deprecated. Use {new} instead."
    logger.warning("DEPRECATED! %s", message)
    warnings.warn(message, DeprecationWarning, stacklevel=3)


def _normalise_hint(hint: object) -> object:
    """A comparable form of a type hint, so ``list[str]`` matches ``typing.List[str]``."""
    origin = typing.get_origin(hint)
    if origin is None:
        return hint
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return (typing.Union, frozenset(_normalise_hint(arg) for arg in args))
    return (origin, tuple(_normalise_hint(arg) for arg in args))


def _first_match(what: str, matching: list[_Codec]) -> _Codec | None:
    if not matching:
        logger.debug("codec.not_found %s", what)
        return None
    if len(matching) > 1:
        logger.debug(
            "codec.ambiguous %s matches=%s using=%s",
            what,
            [codec.ContentType for codec in matching],
            matching[0].ContentType,
        )
    return matching[0]


def _by_payload(payload: object, codecs: Iterable[_Codec]) -> _Codec | None:
    matching = [codec for codec in codecs if codec.can_encode(payload)]
    return _first_match(f"payload_type={type(payload).__name__}", matching)


def _unaliased(hint: object) -> object:
    """What a ``type X = ...`` alias (PEP 695) stands for, else ``hint`` itself. numpy 2.5 on
    Python 3.12+ makes ``npt.NDArray`` such an alias: ``NDArray[np.float32]``'s origin is the
    alias then, not ``np.ndarray``, and the bare ``NDArray`` has none."""
    alias = getattr(typing, "TypeAliasType", None)  # Python 3.12+
    if alias is None:
        return hint
    while isinstance(hint, alias):
        hint = hint.__value__
    origin = typing.get_origin(hint)
    if isinstance(origin, alias):  # subscripted: the alias's value stands in for it
        return _unaliased(origin.__value__)
    return hint


def _by_type_hint(type_hint: object, codecs: Iterable[_Codec]) -> _Codec | None:
    codecs = list(codecs)
    wanted = _normalise_hint(type_hint)
    matching = [codec for codec in codecs if _normalise_hint(codec.TypeHint) == wanted]
    origin = typing.get_origin(_unaliased(type_hint))
    if not matching and origin is not None:
        # e.g. `npt.NDArray[np.float32]` finds the codec for `np.ndarray`
        matching = [codec for codec in codecs if codec.TypeHint is origin]
    return _first_match(f"type_hint={type_hint}", matching)


class _CodecRegistry:
    """Codecs by content type, in registration order (which breaks ties between matches).

    Optional codecs (``PandasCodec``) are registered lazily: importing pandas takes most of a
    second, so their module is imported only when a caller asks for their content type, or when
    the library they need has already been imported by someone else (a caller holding a
    DataFrame, or annotating with one, has imported pandas).
    """

    def __init__(self) -> None:
        self._input_codecs: dict[str, InputCodecLike] = {}
        self._request_codecs: dict[str, RequestCodecLike] = {}
        # content type -> (module registering the codec, top-level module it needs)
        self._optional: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def register_input_codec(self, content_type: str, codec: InputCodecLike) -> None:
        # A later registration replaces an earlier one, as in MLServer.
        self._input_codecs[content_type] = codec

    def register_request_codec(self, content_type: str, codec: RequestCodecLike) -> None:
        self._request_codecs[content_type] = codec

    def register_optional_codec(self, content_type: str, module: str, requires: str) -> None:
        """Imports ``module`` (which registers a codec) once it is needed; see the class doc."""
        self._optional[content_type] = (module, requires)

    def _load_optional(self, content_type: str | None = None) -> None:
        if not self._optional:
            return
        with self._lock:
            for key, (module, requires) in list(self._optional.items()):
                if key != content_type and requires not in sys.modules:
                    continue
                del self._optional[key]
                try:
                    importlib.import_module(module)
                except ImportError as exc:
                    logger.debug("codec.unavailable content_type=%s reason=%s", key, exc)

    def find_input_codec(
        self,
        content_type: str | None = None,
        payload: object = None,
        type_hint: object = None,
    ) -> InputCodecLike | None:
        """The input codec for a content type, else for a payload, else for a type hint."""
        if content_type:
            self._load_optional(content_type)
            return self._input_codecs.get(content_type)
        # MLServer tests `elif payload:`, which raises for numpy arrays of 2+ elements.
        if payload is not None:
            return self.find_input_codec_by_payload(payload)
        if type_hint is not None:
            return self.find_input_codec_by_type_hint(type_hint)
        return None

    def find_input_codec_by_payload(self, payload: object) -> InputCodecLike | None:
        self._load_optional()
        return _by_payload(payload, list(self._input_codecs.values()))

    def find_input_codec_by_type_hint(self, type_hint: object) -> InputCodecLike | None:
        self._load_optional()
        return _by_type_hint(type_hint, list(self._input_codecs.values()))

    def find_request_codec(
        self,
        content_type: str | None = None,
        payload: object = None,
        type_hint: object = None,
    ) -> RequestCodecLike | None:
        """The request codec for a content type, else for a payload, else for a type hint."""
        if content_type:
            self._load_optional(content_type)
            return self._request_codecs.get(content_type)
        if payload is not None:
            return self.find_request_codec_by_payload(payload)
        if type_hint is not None:
            return self.find_request_codec_by_type_hint(type_hint)
        return None

    def find_request_codec_by_payload(self, payload: object) -> RequestCodecLike | None:
        self._load_optional()
        return _by_payload(payload, list(self._request_codecs.values()))

    def find_request_codec_by_type_hint(self, type_hint: object) -> RequestCodecLike | None:
        self._load_optional()
        return _by_type_hint(type_hint, list(self._request_codecs.values()))


_codec_registry = _CodecRegistry()

find_input_codec = _codec_registry.find_input_codec
find_input_codec_by_payload = _codec_registry.find_input_codec_by_payload
find_input_codec_by_type_hint = _codec_registry.find_input_codec_by_type_hint
find_request_codec = _codec_registry.find_request_codec
find_request_codec_by_payload = _codec_registry.find_request_codec_by_payload
find_request_codec_by_type_hint = _codec_registry.find_request_codec_by_type_hint

_InputCodecT = TypeVar("_InputCodecT", bound=InputCodecLike)
_RequestCodecT = TypeVar("_RequestCodecT", bound=RequestCodecLike)


def register_input_codec(CodecKlass: _InputCodecT) -> _InputCodecT:
    """Class decorator: makes an input codec findable under its ``ContentType``."""
    if CodecKlass.ContentType is not None:
        _codec_registry.register_input_codec(CodecKlass.ContentType, CodecKlass)
    return CodecKlass


def register_request_codec(CodecKlass: _RequestCodecT) -> _RequestCodecT:
    """Class decorator: makes a request codec findable under its ``ContentType``."""
    if CodecKlass.ContentType is not None:
        _codec_registry.register_request_codec(CodecKlass.ContentType, CodecKlass)
    return CodecKlass
