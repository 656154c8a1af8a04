"""``PandasCodec`` ("pd"): a DataFrame as a request (response), one input (output) per column.

Needs pandas; ``conveyor.codecs`` imports this module only when pandas is wanted (see
``conveyor.codecs.base._CodecRegistry``). Numeric columns go out as numpy arrays (views of the
column where pandas allows), not lists. String columns are BYTES with content type "str"; columns
of anything else (lists, dicts, mixed values) are BYTES holding one JSON document per row, with
content type "pd_json".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from conveyor.codecs.base import RequestCodec, register_request_codec
from conveyor.codecs.errors import CodecError
from conveyor.codecs.json import decode_json_input_or_output, encode_to_json
from conveyor.codecs.lists import _flat_elements
from conveyor.codecs.numpy import _datatype_of, _to_ndarray, convert_nan, to_dtype
from conveyor.codecs.string import StringCodec, encode_str
from conveyor.codecs.utils import (
    InputOrOutput,
    get_decoded,
    has_decoded,
    inject_batch_dimension,
)
from conveyor.types import (
    Datatype,
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    ResponseOutput,
)

__all__ = ("PandasCodec",)


def _column(array: npt.NDArray[Any], rows: int) -> npt.NDArray[Any] | list[Any]:
    if array.ndim == 1:
        return array
    if array.ndim == 0 or array.size == rows:
        return array.reshape(rows)  # [N, 1] -> [N], a view
    return list(array.reshape(rows, -1))  # one array per row, as a multi-dim column


def _to_series(input_or_output: InputOrOutput) -> pd.Series[Any]:
    parameters = input_or_output.parameters
    if parameters and parameters.content_type == PandasCodec.JsonContentType:
        return pd.Series(decode_json_input_or_output(input_or_output))

    decoded = get_decoded(input_or_output) if has_decoded(input_or_output) else None
    if Datatype(input_or_output.datatype) is Datatype.BYTES:
        # As MLServer: BYTES columns keep whatever they hold (str once decoded, else bytes).
        if decoded is None:
            root = input_or_output.data.root
            # One bare bytes (str) object, not a list: MLServer's column iterates it, giving
            # its byte values (characters), one per row.
            decoded = list(root) if isinstance(root, bytes | str) else _flat_elements(root)
        return pd.Series(decoded)

    if decoded is None:
        decoded = _to_ndarray(input_or_output)
    if isinstance(decoded, np.ndarray):
        rows = input_or_output.shape[0] if input_or_output.shape else 1
        decoded = _column(decoded, rows)
        if isinstance(decoded, list):
            return pd.Series(decoded)
    return pd.Series(decoded, dtype=to_dtype(input_or_output), copy=False)


def _process_bytes(data: list[Any], use_bytes: bool) -> tuple[list[Any], str | None]:
    # Columns of strings are sent as BYTES (encoded, for gRPC), tagged "str" so that they decode
    # back to str. A column with anything else cannot be tagged: None means "send as JSON".
    if not all(isinstance(elem, str | bytes) for elem in data):
        return data, None
    if use_bytes:
        data = [encode_str(elem) if isinstance(elem, str) else elem for elem in data]
    return data, StringCodec.ContentType


def _to_response_output(series: pd.Series[Any], use_bytes: bool = True) -> ResponseOutput:
    name = str(series.name)
    dtype = series.dtype
    numpy_dtype = dtype if isinstance(dtype, np.dtype) else getattr(dtype, "numpy_dtype", None)
    datatype = _datatype_of(numpy_dtype) if numpy_dtype is not None else Datatype.BYTES
    if datatype is None or (dtype.kind in "mM"):
        raise CodecError(f"column '{name}' has dtype {dtype}, which has no V2 datatype", name=name)

    content_type = None
    data: Any
    if datatype is not Datatype.BYTES:
        if series.hasnans and dtype.kind in "iub":
            raise CodecError(
                f"column '{name}' ({dtype}) has missing values, which {datatype.value} cannot "
                "hold; cast it to float first",
                name=name,
            )
        # A numpy array (a view for numpy dtypes); NaN becomes null if dumped as JSON.
        if isinstance(dtype, np.dtype):
            data = series.to_numpy()
        else:  # a nullable extension dtype: pd.NA becomes NaN
            data = series.to_numpy(dtype=numpy_dtype, na_value=np.nan)
    else:
        # As MLServer: NaN (a missing value) becomes None.
        values = [convert_nan(elem) for elem in series.tolist()]
        data, content_type = _process_bytes(values, use_bytes)
        if content_type is None:
            data = [encode_to_json(elem, use_bytes) for elem in values]
            content_type = PandasCodec.JsonContentType

    return ResponseOutput(
        name=name,
        shape=inject_batch_dimension(list(series.shape)),
        data=data,
        datatype=datatype,
        parameters=Parameters(content_type=content_type) if content_type else None,
    )


def _to_dataframe(inputs: list[RequestInput] | list[ResponseOutput]) -> pd.DataFrame:
    columns = {item.name: _to_series(item) for item in inputs}
    if len({len(column) for column in columns.values()}) > 1:
        # MLServer aligns the columns on their index, padding the short ones with NaN.
        rows = ", ".join(f"{name}={len(column)}" for name, column in columns.items())
        raise CodecError(f"columns do not have the same number of rows ({rows})")
    return pd.DataFrame(columns)


@register_request_codec
class PandasCodec(RequestCodec):
    """Decodes a request (response) as a DataFrame, each input (output) being one column."""

    ContentType = "pd"
    JsonContentType = "pd_json"
    TypeHint = pd.DataFrame

    @classmethod
    def can_encode(cls, payload: object) -> bool:
        return isinstance(payload, pd.DataFrame)

    @classmethod
    def encode_response(
        cls,
        model_name: str,
        payload: pd.DataFrame,
        model_version: str | None = None,
        use_bytes: bool = True,
        **kwargs: Any,
    ) -> InferenceResponse:
        """One output per column; raises ``CodecError`` for dtypes with no V2 datatype."""
        return InferenceResponse(
            model_name=model_name,
            model_version=model_version,
            parameters=Parameters(content_type=cls.ContentType),
            outputs=cls.encode_outputs(payload, use_bytes=use_bytes),
        )

    @classmethod
    def decode_response(cls, response: InferenceResponse) -> pd.DataFrame:
        return _to_dataframe(response.outputs)

    @classmethod
    def encode_outputs(cls, payload: pd.DataFrame, use_bytes: bool = True) -> list[ResponseOutput]:
        return [_to_response_output(payload[col], use_bytes=use_bytes) for col in payload]

    @classmethod
    def encode_request(
        cls, payload: pd.DataFrame, use_bytes: bool = True, **kwargs: Any
    ) -> InferenceRequest:
        """One input per column; raises ``CodecError`` for dtypes with no V2 datatype."""
        outputs = cls.encode_outputs(payload, use_bytes=use_bytes)
        return InferenceRequest(
            parameters=Parameters(content_type=cls.ContentType),
            inputs=[
                RequestInput(
                    name=output.name,
                    datatype=output.datatype,
                    shape=output.shape,
                    data=output.data,
                    parameters=output.parameters,
                )
                for output in outputs
            ],
        )

    @classmethod
    def decode_request(cls, request: InferenceRequest) -> pd.DataFrame:
        """Columns named after the inputs; inputs a codec already decoded are used as decoded."""
        return _to_dataframe(request.inputs)
