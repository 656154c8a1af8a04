"""A unary job's answer encoded without a ``Message`` (``wire.encode_result``, the worker's
``result_fields``) is, byte for byte, what ``encode_message`` gives for the ``Message`` the
worker built before: for responses small and large (big arrays in fields of their own), with
parameters, plain payloads, and the same errors."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from conveyor.broker import Delivery
from conveyor.broker.wire import Job, Message, MessageType, encode_message, encode_result
from conveyor.codecs import NumpyCodec
from conveyor.compiled import compiled_modules
from conveyor.types import InferenceRequest, InferenceResponse, Parameters
from conveyor.worker.answers import outcome, result_fields, result_message


def _plain(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: bytes(v) if isinstance(v, memoryview) else v for k, v in fields.items()}


def _response(rows: int, *, own_id: str | None = None) -> InferenceResponse:
    array = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    return InferenceResponse(
        id=own_id,
        model_name="m",
        model_version="2",
        parameters=Parameters(content_type="np", extra=1),
        outputs=[NumpyCodec.encode_output("y", array)],
    )


PAYLOADS: list[Any] = [
    _response(1),
    _response(1, own_id="r-1"),
    _response(50_000),  # its array in a field of its own
    np.ones((2, 2), dtype=np.int64),
    {"a": [1, 2], "b": "x"},
    "text",
    b"\x00\x01",
    None,
]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize(("attempt", "entry"), [(1, "1-0"), (3, ""), (0, "17-4")])
def test_encode_result_is_encode_message(payload: Any, attempt: int, entry: str) -> None:
    message = Message(MessageType.RESULT, "job-1", attempt, payload=payload, entry=entry)
    assert _plain(encode_result("job-1", attempt, entry, payload)) == _plain(
        encode_message(message)
    )


@pytest.mark.parametrize(("message_id", "attempt"), [("", 1), ("j", -1), ("j", True)])
def test_encode_result_refuses_as_encode_message(message_id: str, attempt: Any) -> None:
    if attempt is True and "conveyor.broker.wire.messages" in compiled_modules():
        pytest.skip("compiled by mypyc (setup.py), an int parameter takes a bool as its int")
    message = Message(MessageType.RESULT, message_id, attempt, payload=None, entry="1-0")
    with pytest.raises(ValueError, match=r".") as expected:
        encode_message(message)
    with pytest.raises(ValueError, match=re.escape(str(expected.value))):
        encode_result(message_id, attempt, "1-0", None)


@pytest.mark.parametrize("request_id", [None, "own"])
def test_result_fields_is_result_message(request_id: str | None) -> None:
    request = InferenceRequest(
        id=request_id, inputs=[NumpyCodec.encode_input("x", np.zeros((1, 3), np.float32))]
    )
    job = Job(
        "job-7", "predict", "m", None, "p:reply:{c}:1", "p:bell:{c}", 9.0, 1.0, args=(request,)
    )
    delivery = Delivery("p:jobs:{m}", b"5-1", {}, 2)
    fields = result_fields(job, delivery, _response(1))
    message = result_message(job, delivery, _response(1))
    assert isinstance(message.payload, InferenceResponse)
    assert message.payload.id == (request_id or "job-7")
    assert _plain(fields) == _plain(encode_message(message))
    assert outcome(fields) == outcome(message) == "ok"
