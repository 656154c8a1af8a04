"""The errors codecs raise; all are ``MLServerError``s (status 400), as in MLServer.

::

    MLServerError
    ├── CodecError        a payload could not be encoded or decoded; ``name`` is the tensor
    ├── CodecNotFound     no codec for a content type, type hint or payload
    ├── InputsNotFound    ``decode_args``: request inputs the signature has no parameter for
    └── OutputNotFound    ``decode_args``: a returned value the return annotation does not allow
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from conveyor.errors import MLServerError
from conveyor.types import RequestInput

__all__ = ("CodecError", "CodecNotFound", "InputsNotFound", "OutputNotFound")


class CodecError(MLServerError):
    """A payload could not be encoded or decoded.

    ``name`` is the input or output involved, when there is one; the message names it too.
    """

    def __init__(self, msg: str, *, name: str | None = None) -> None:
        self.name = name
        super().__init__(f"There was an error encoding / decoding the payload: {msg}")


class CodecNotFound(MLServerError):
    """No codec matches a content type, a type hint or a payload."""

    def __init__(
        self,
        name: str | None = None,
        payload_type: str | None = None,
        is_input: bool = False,
        is_request: bool = False,
    ) -> None:
        self.name = name
        self.payload_type = payload_type
        if name and payload_type:
            what = f"with name '{name}' and type {payload_type}"
        elif name:
            what = f"with name '{name}'"
        elif payload_type:
            what = f"with type {payload_type}"
        else:
            what = ""
        direction = "input" if is_input else "output"
        if is_request:
            category = f"{direction} {'request' if is_input else 'response'}"
        else:
            category = f"{direction} field"
        super().__init__(f"Codec not found for {category} {what}".rstrip())


class OutputNotFound(MLServerError):
    """The value at ``output_idx`` does not match the return annotation of a ``decode_args``
    method."""

    def __init__(self, output_idx: int, output_type: type, output_hints: Sequence[object]) -> None:
        self.output_idx = output_idx
        expected = ", ".join(f"'{hint}'" for hint in output_hints)
        super().__init__(
            f"Unexpected output value at position '{output_idx}' ({output_type}). "
            f"Expected outputs are {expected} outputs."
        )


class InputsNotFound(MLServerError):
    """Request inputs that no parameter of a ``decode_args`` method takes."""

    def __init__(self, inputs: Sequence[RequestInput], input_hints: Iterable[str]) -> None:
        self.input_names = [request_input.name for request_input in inputs]
        missing = ", ".join(f"'{name}'" for name in self.input_names)
        available = ", ".join(f"'{name}'" for name in input_hints)
        super().__init__(f"Input {missing} was not found. Available inputs are {available}.")
