"""``@decode_args``: a ``predict`` that takes and returns Python values, codecs picked from its
type hints.

::

    class MyModel(MLModel):
        @decode_args
        async def predict(self, foo: np.ndarray, bar: list[str]) -> np.ndarray: ...

Each parameter is decoded from the request input of the same name by the input codec for its type
hint; a parameter whose hint has a request codec (``pd.DataFrame``) takes the inputs no other
parameter named. Return values (a tuple for several) are encoded by their hints' codecs, outputs
being named ``output-<position>``.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, Protocol, TypeVar

from conveyor.codecs.base import (
    InputCodec,
    InputCodecLike,
    RequestCodec,
    RequestCodecLike,
    find_input_codec,
    find_request_codec,
)
from conveyor.codecs.errors import CodecNotFound, InputsNotFound, OutputNotFound
from conveyor.codecs.utils import Codec
from conveyor.types import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput

__all__ = ("SignatureCodec", "decode_args")


class _Model(Protocol):
    """What ``decode_args`` reads from the model: ``MLModel``'s ``name`` and ``version``."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str | None: ...


_M = TypeVar("_M", bound=_Model)


def _as_list(a: object) -> list[Any]:
    """A return annotation (or value) as a list: tuples split, ``None`` is empty."""
    if a is None:
        return []
    if isinstance(a, tuple):
        return list(a)
    if typing.get_origin(a) is tuple:
        return list(typing.get_args(a))
    return [a]


def _is_input_codec(codec: Codec) -> bool:
    return isinstance(codec, InputCodec) or (
        isinstance(codec, type) and issubclass(codec, InputCodec)
    )


def _is_request_codec(codec: Codec) -> bool:
    return isinstance(codec, RequestCodec) or (
        isinstance(codec, type) and issubclass(codec, RequestCodec)
    )


def _unwrap_optional(hint: object) -> object:
    """``X`` for ``Optional[X]`` / ``X | None``: to us, Optional is only syntactic sugar."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _find_codec(name: str | None, type_hint: object, is_input: bool) -> Codec:
    codec: Codec | None = find_input_codec(type_hint=type_hint)
    if codec is None:
        codec = find_request_codec(type_hint=type_hint)
    if codec is None:
        raise CodecNotFound(name=name, payload_type=str(type_hint), is_input=is_input)
    return codec


class SignatureCodec:
    """Maps a function's type hints to codecs; ``decode_args`` uses it. Internal, as in MLServer.

    Raises ``CodecNotFound`` on creation if a hint has no codec.
    """

    def __init__(self, predict: Callable[..., Any]) -> None:
        self._predict = predict
        hints = {
            name: _unwrap_optional(hint) for name, hint in typing.get_type_hints(predict).items()
        }
        self._output_hints = _as_list(hints.pop("return", None))
        self._input_hints = hints
        self._input_codecs: dict[str, Codec] = {
            name: _find_codec(name, hint, is_input=True) for name, hint in hints.items()
        }
        self._output_codecs: list[Codec] = [
            _find_codec(None, hint, is_input=False) for hint in self._output_hints
        ]

    def _get_request_codec(self) -> tuple[str, RequestCodecLike] | None:
        for name, codec in self._input_codecs.items():
            if _is_request_codec(codec):
                return name, typing.cast(RequestCodecLike, codec)
        return None

    def decode_request(self, request: InferenceRequest) -> dict[str, Any]:
        """The keyword arguments for the function; raises ``InputsNotFound`` for inputs that no
        parameter takes, and ``CodecError`` if decoding fails."""
        inputs: dict[str, Any] = {}
        extra: list[RequestInput] = []
        for request_input in request.inputs:
            codec = self._input_codecs.get(request_input.name)
            if codec is None:
                # Kept for a request codec (e.g. a DataFrame), which may take several inputs.
                extra.append(request_input)
                continue
            if not _is_input_codec(codec):
                raise CodecNotFound(name=request_input.name, is_input=True)
            inputs[request_input.name] = typing.cast(InputCodecLike, codec).decode_input(
                request_input
            )

        if extra:
            found = self._get_request_codec()
            if found is None:
                raise InputsNotFound(extra, self._input_codecs)
            name, request_codec = found
            inputs[name] = request_codec.decode_request(InferenceRequest(inputs=extra))
        return inputs

    def encode_response(
        self, model_name: str, payload: object, model_version: str | None = None
    ) -> InferenceResponse:
        """The returned value(s) as a response; raises ``OutputNotFound`` if one does not match
        its type hint."""
        outputs: list[ResponseOutput] = []
        for idx, value in enumerate(_as_list(payload)):
            outputs += self._encode_outputs(idx, value)
        return InferenceResponse(
            model_name=model_name, model_version=model_version, outputs=outputs
        )

    def _encode_outputs(self, idx: int, payload: object) -> list[ResponseOutput]:
        if idx >= len(self._output_codecs) or not self._output_codecs[idx].can_encode(payload):
            raise OutputNotFound(idx, type(payload), self._output_hints)
        codec = self._output_codecs[idx]
        if _is_input_codec(codec):
            output_codec = typing.cast(InputCodecLike, codec)
            return [output_codec.encode_output(name=f"output-{idx}", payload=payload)]
        # A request codec (a DataFrame): its outputs, without the response around them.
        response = typing.cast(RequestCodecLike, codec).encode_response(
            model_name="", payload=payload
        )
        return response.outputs


def decode_args(
    predict: Callable[Concatenate[_M, ...], Awaitable[Any]],
) -> Callable[[_M, InferenceRequest], Coroutine[Any, Any, InferenceResponse]]:
    """Turns ``async def predict(self, **typed inputs) -> typed outputs`` into an ``MLModel``
    ``predict(self, request) -> InferenceResponse``.

    Raises ``CodecNotFound`` at decoration time if a type hint has no codec; the wrapped method
    raises ``CodecError`` / ``InputsNotFound`` / ``OutputNotFound`` for payloads that do not fit.
    """
    codec = SignatureCodec(predict)

    @functools.wraps(predict)
    async def _predict(self: _M, request: InferenceRequest) -> InferenceResponse:
        inputs = codec.decode_request(request)
        outputs = await predict(self, **inputs)
        return codec.encode_response(
            model_name=self.name, payload=outputs, model_version=self.version
        )

    return _predict
