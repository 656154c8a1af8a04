"""conveyor.batching.BatchedRequests: MLServer's merging of requests and splitting of the
response, for runtimes that batch by themselves (numpy data stays numpy, outputs split as views)."""

from __future__ import annotations

import numpy as np

from conveyor.batching import BatchedRequests
from conveyor.types import (
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    RequestOutput,
    ResponseOutput,
)


def request(
    data: object, shape: list[int], id: str | None = None, **params: object
) -> InferenceRequest:
    return InferenceRequest(
        id=id,
        inputs=[
            RequestInput(
                name="x",
                shape=shape,
                datatype="FP32",
                data=data,
                parameters=Parameters(**params) if params else None,
            )
        ],
    )


def test_arrays_are_stacked_along_the_first_axis() -> None:
    first = np.arange(6, dtype=np.float32).reshape(2, 3)
    batched = BatchedRequests(
        {"a": request(first, [2, 3], id="r1"), "b": request([6, 7, 8], [1, 3])}
    )

    merged = batched.merged_request.inputs[0]
    assert merged.shape == [3, 3]
    assert isinstance(merged.data.root, np.ndarray)
    np.testing.assert_array_equal(merged.data.root, np.arange(9).reshape(3, 3))
    assert batched._minibatch_sizes == {"a": 2, "b": 1}
    assert batched.merged_request.id is None


def test_lists_merge_as_in_mlserver_and_parameters_become_lists() -> None:
    batched = BatchedRequests(
        {
            "a": request([1, 2], [1, 2], content_type="np", foo="x"),
            "b": request([3, 4], [1, 2], foo="y", time="13:00"),
        }
    )

    assert batched.merged_request.inputs[0] == RequestInput(
        name="x",
        shape=[2, 2],
        datatype="FP32",
        data=[1, 2, 3, 4],
        parameters=Parameters(content_type="np", foo=["x", "y"], time="13:00"),
    )


def test_split_gives_each_request_its_rows_id_and_parameters() -> None:
    batched = BatchedRequests(
        {
            "a": request(np.zeros((2, 1), np.float32), [2, 1], id="req-a"),
            "b": request(np.zeros((1, 1), np.float32), [1, 1]),
        }
    )
    batched.merged_request.outputs = [RequestOutput(name="y")]
    scores = np.arange(6, dtype=np.float64).reshape(3, 2)
    merged = InferenceResponse(
        model_name="m",
        model_version="v1",
        parameters=Parameters(content_type="np"),
        outputs=[
            ResponseOutput(
                name="y",
                shape=[3, 2],
                datatype="FP64",
                data=scores,
                parameters=Parameters(content_type="np", why=["p", "q", "r"]),
            )
        ],
    )

    responses = batched.split_response(merged)

    assert list(responses) == ["a", "b"]
    a, b = responses["a"], responses["b"]
    assert (a.id, b.id) == ("req-a", None)  # each request's own id, as it sent it
    assert a.model_version == b.model_version == "v1"
    assert a.parameters == b.parameters == Parameters(content_type="np")
    assert a.outputs[0] == ResponseOutput(
        name="y",
        shape=[2, 2],
        datatype="FP64",
        data=[0.0, 1.0, 2.0, 3.0],
        parameters=Parameters(content_type="np", why="p"),
    )
    assert b.outputs[0].shape == [1, 2]
    np.testing.assert_array_equal(b.outputs[0].data.root, [4.0, 5.0])
    assert b.outputs[0].parameters == Parameters(content_type="np", why="r")
    assert np.shares_memory(b.outputs[0].data.root, scores)  # a view, not a copy


def test_no_requests_give_an_empty_request() -> None:
    batched = BatchedRequests()
    assert batched.merged_request == InferenceRequest(inputs=[])
    assert batched.split_response(InferenceResponse(model_name="m", outputs=[])) == {}
