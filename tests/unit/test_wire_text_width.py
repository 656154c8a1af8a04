"""Fixed-width text arrays go on the wire as wide as their widest item, not as their dtype: a
row of a batch's answer keeps the batch's width (its longest sentence), which a receiver would
otherwise allocate for each of the row's items, and refuse as out of proportion."""

from __future__ import annotations

import numpy as np
import pytest

from conveyor.broker.wire import Message, MessageType, decode_message, encode_message
from conveyor.types import InferenceResponse, ResponseOutput

_LONG = "w" * 70_000


@pytest.mark.parametrize(
    ("batch", "width"),
    [
        (np.array([[b"a dog"], [_LONG.encode()], [b""]]), 5),
        (np.array([["é-ß-✓"], [_LONG], [""]]), 5),
        (np.array([[b""], [_LONG.encode()]]), 1),  # numpy's narrowest
    ],
    ids=["bytes", "str", "empty"],
)
def test_a_row_of_a_wide_batch_travels_as_wide_as_its_own_items(
    batch: np.ndarray, width: int
) -> None:
    row = batch[:1]  # the batch's width, a short item of its own
    output = ResponseOutput(name="text", shape=[1, 1], datatype="BYTES", data=row)
    response = InferenceResponse(model_name="m", outputs=[output])
    fields = encode_message(Message(MessageType.RESULT, "r1", 0, payload=response))
    raw = {
        key.encode(): value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
        for key, value in fields.items()
    }
    message = decode_message(raw)  # refused as out of proportion when sent as wide as the batch
    assert isinstance(message.payload, InferenceResponse)
    got = message.payload.outputs[0].data.root
    assert isinstance(got, np.ndarray)
    assert got.tolist() == row.tolist()
    assert got.dtype == np.dtype(f"{row.dtype.kind}{width}")
