"""The V2 (Open Inference Protocol) data plane, with MLServer's names and JSON shapes.

The one difference from MLServer: a tensor's ``data`` may hold a numpy array, and it stays
one from client to model and back. It turns into a JSON list only when a model is dumped in
JSON mode (``model_dump_json`` or ``model_dump(mode="json")``), i.e. at a JSON edge.
Tensors compare by value, so an array equals the same tensor held as a list (see
``conveyor._equality``).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

import numpy as np
import pydantic
from pydantic import ConfigDict, Field, RootModel, field_serializer

from conveyor._equality import tensor_data_equal, values_equal

__all__ = (
    "BaseModel",
    "Datatype",
    "InferenceErrorResponse",
    "InferenceRequest",
    "InferenceResponse",
    "MetadataModelErrorResponse",
    "MetadataModelResponse",
    "MetadataServerErrorResponse",
    "MetadataServerResponse",
    "MetadataTensor",
    "Parameters",
    "RepositoryIndexRequest",
    "RepositoryIndexResponse",
    "RepositoryIndexResponseItem",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "State",
    "TensorData",
)


# Where codecs cache a decoded payload (conveyor.codecs.DecodedParameterName; MLServer's name).
_DECODED_PAYLOAD = "_decoded_payload"


class BaseModel(pydantic.BaseModel):
    """MLServer's base: dumps leave out unset and ``None`` fields, enums dump as values."""

    model_config = ConfigDict(protected_namespaces=(), use_enum_values=True)

    def model_dump(
        self, *, exclude_unset: bool = True, exclude_none: bool = True, **kwargs: Any
    ) -> dict[str, Any]:
        return super().model_dump(exclude_unset=exclude_unset, exclude_none=exclude_none, **kwargs)

    def model_dump_json(
        self, *, exclude_unset: bool = True, exclude_none: bool = True, **kwargs: Any
    ) -> str:
        return super().model_dump_json(
            exclude_unset=exclude_unset, exclude_none=exclude_none, **kwargs
        )


class MetadataServerResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class MetadataServerErrorResponse(BaseModel):
    error: str


class MetadataModelErrorResponse(BaseModel):
    error: str


class Parameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    content_type: str | None = None
    headers: dict[str, Any] | None = None

    def __eq__(self, other: object) -> bool:
        # By the values they carry, numpy arrays included; a payload a codec decoded and
        # cached here (an attribute, not a field) is not part of the value.
        if type(other) is not type(self):
            return super().__eq__(other)
        assert isinstance(other, Parameters)
        return values_equal(self._carried(), other._carried())

    __hash__ = None  # type: ignore[assignment]

    def _carried(self) -> dict[str, Any]:
        carried = {name: getattr(self, name) for name in type(self).model_fields}
        carried.update(self.__pydantic_extra__ or {})
        carried.pop(_DECODED_PAYLOAD, None)
        return carried


def _to_json_value(value: Any) -> Any:
    """Turns numpy arrays and scalars (anywhere in ``value``) into JSON-ready values."""
    if isinstance(value, np.ndarray):
        # V2 JSON sends tensor data flat, in row-major order; the shape travels beside it.
        return [_to_json_value(item) for item in value.ravel().tolist()]
    if isinstance(value, np.generic):
        return _to_json_value(value.item())
    if isinstance(value, bytes):
        # pydantic would do the same for a bytes field: MLServer's JSON carries UTF-8 text.
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list | tuple):
        return [_to_json_value(item) for item in value]
    return value


class TensorData(RootModel[Any]):
    """A tensor's elements: a (possibly nested) list, or a numpy array kept as it is."""

    root: Any = Field(..., title="TensorData")

    @field_serializer("root", when_used="json")
    def _serialize_json(self, root: Any) -> Any:
        return _to_json_value(root)

    def __iter__(self) -> Any:
        return iter(self.root)

    def __getitem__(self, idx: Any) -> Any:
        return self.root[idx]

    def __len__(self) -> int:
        return len(self.root)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorData):
            return NotImplemented
        return tensor_data_equal(self.root, other.root)

    __hash__ = None  # type: ignore[assignment]  # mutable, as pydantic's models


def _tensor_eq(self: RequestInput | ResponseOutput, other: object) -> bool:
    """``==`` of a tensor: its fields as pydantic compares them, its data by value."""
    if type(other) is not type(self):
        return pydantic.BaseModel.__eq__(self, other)
    assert isinstance(other, RequestInput | ResponseOutput)
    if (self.name, self.shape, self.datatype, self.parameters) != (
        other.name,
        other.shape,
        other.datatype,
        other.parameters,
    ):
        return False
    count = math.prod(self.shape) if self.datatype == Datatype.BYTES.value else None
    return tensor_data_equal(self.data.root, other.data.root, count)


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters | None = None


class InferenceErrorResponse(BaseModel):
    error: str | None = None


class Datatype(str, Enum):  # noqa: UP042 - MLServer's Enum; str so values compare equal
    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"


class MetadataTensor(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]
    parameters: Parameters | None = None


class RequestInput(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters | None = None
    data: TensorData

    __eq__ = _tensor_eq
    __hash__ = None  # type: ignore[assignment]


class ResponseOutput(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters | None = None
    data: TensorData

    __eq__ = _tensor_eq
    __hash__ = None  # type: ignore[assignment]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class MetadataModelResponse(BaseModel):
    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[MetadataTensor] | None = None
    outputs: list[MetadataTensor] | None = None
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


# The model repository's extension (``/v2/repository/index``), as MLServer's
# ``mlserver.types.model_repository``.


class RepositoryIndexRequest(BaseModel):
    ready: bool | None = None


class State(str, Enum):  # noqa: UP042 - MLServer's Enum; str so values compare equal
    UNKNOWN = "UNKNOWN"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


class RepositoryIndexResponseItem(BaseModel):
    name: str
    version: str | None = None
    state: State
    reason: str


class RepositoryIndexResponse(RootModel[list[RepositoryIndexResponseItem]]):
    root: list[RepositoryIndexResponseItem]
