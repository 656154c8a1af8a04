"""gateway/grpc's generated code: equal to what its .proto generates, wire-compatible with what
tritonclient speaks, and importable beside tritonclient's own (same proto package) in one
process."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor

from conveyor.gateway.grpc import _codegen
from conveyor.gateway.grpc import inference_pb2 as pb

triton = pytest.importorskip("tritonclient.grpc.service_pb2")


@pytest.mark.timeout(60)
def test_the_generated_code_is_what_the_proto_generates() -> None:
    generated = _codegen.generate()
    assert sorted(generated) == sorted(_codegen.GENERATED)
    for name, text in generated.items():
        assert (_codegen.HERE / name).read_text() == text, (
            f"gateway/grpc/{name} differs from what inference.proto generates: run "
            "`python -m conveyor.gateway.grpc._codegen` and commit the result"
        )


def _fields(message: Descriptor) -> dict[str, tuple[int, int, str]]:
    """name -> (number, type, type name of a message field), nested messages included."""
    found = {}
    for field in message.fields:
        kind = field.message_type.full_name if field.message_type is not None else ""
        found[field.name] = (field.number, field.type, kind)
    return found


def _messages(message: Descriptor) -> list[Descriptor]:
    return [message, *(inner for nested in message.nested_types for inner in _messages(nested))]


def test_every_field_tritonclient_knows_has_its_number_and_type() -> None:
    """For each message both protos define, each of Triton's fields is ours too, same number
    and type (we may have more: MLServer's, which tritonclient skips)."""
    ours = {
        m.full_name: m
        for top in pb.DESCRIPTOR.message_types_by_name.values()
        for m in _messages(top)
    }
    compared = 0
    for top in triton.DESCRIPTOR.message_types_by_name.values():
        for theirs in _messages(top):
            mine = ours.get(theirs.full_name)
            if mine is None:
                continue  # Triton's own extensions (statistics, shared memory, ...)
            mine_fields = _fields(mine)
            for name, spec in _fields(theirs).items():
                assert mine_fields.get(name) == spec, f"{theirs.full_name}.{name}"
            compared += 1
    assert compared >= 25  # every message of the V2 service and its nested ones


def test_the_service_methods_match_tritonclients() -> None:
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in service.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
        assert (method.client_streaming, method.server_streaming) == (
            other.client_streaming,
            other.server_streaming,
        )


def test_the_messages_live_in_a_pool_of_their_own() -> None:
    """Both modules are imported here, in one process: tritonclient's in protobuf's default
    pool, ours in its own. Each side reads the other's bytes."""
    assert triton.DESCRIPTOR.name == "grpc_service.proto"
    assert pb.DESCRIPTOR.pool is not triton.DESCRIPTOR.pool
    request = pb.ModelInferRequest(model_name="m", id="1", raw_input_contents=[b"\x00\x01"])
    request.parameters["p"].double_param = 0.5
    request.inputs.add(name="x", datatype="UINT8", shape=[2])
    theirs = triton.ModelInferRequest.FromString(request.SerializeToString())
    assert (theirs.model_name, theirs.inputs[0].shape, theirs.parameters["p"].double_param) == (
        "m",
        [2],
        0.5,
    )
    answer = triton.ModelStreamInferResponse(error_message="", infer_response={"id": "1"})
    assert (
        pb.ModelStreamInferResponse.FromString(answer.SerializeToString()).infer_response.id == "1"
    )
