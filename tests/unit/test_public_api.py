"""Pins the public API: what a user imports, and where MLServer users expect it."""

import importlib

import pytest

PUBLIC = {
    "conveyor": [
        "ConveyorError",
        "MLModel",
        "ModelMethods",
        "ModelParameters",
        "ModelSettings",
        "custom_handler",
        "log",
        "register",
    ],
    "conveyor.client": ["Client", "ParallelModel"],
    "conveyor.worker": ["Worker", "WorkerSettings"],
    "conveyor.types": [
        "InferenceRequest",
        "InferenceResponse",
        "RequestInput",
        "RequestOutput",
        "ResponseOutput",
        "MetadataModelResponse",
        "MetadataTensor",
        "MetadataServerResponse",
        "Parameters",
        "Datatype",
        "TensorData",
    ],
    "conveyor.errors": [
        "ConveyorError",
        "MLServerError",
        "InferenceError",
        "ModelNotFound",
        "RemoteError",
        "DeadlineExceeded",
        "NoWorkerError",
        "MethodNotAllowed",
        "WireError",
        "BrokerConnectionError",
        "RedisServerError",
        "RedisBinaryNotFound",
        "RedisStartError",
    ],
    # The private Redis server of `conveyor up` and of the tests (its errors are conveyor.errors').
    "conveyor.embedded": [
        "RedisServer",
        "TLSFiles",
        "find_redis_binary",
        "free_port",
        "LOOPBACK",
        "RedisServerError",
        "RedisBinaryNotFound",
        "RedisStartError",
    ],
    "conveyor.codecs": [
        "NumpyCodec",
        "NumpyRequestCodec",
        "StringCodec",
        "StringRequestCodec",
        "Base64Codec",
        "DatetimeCodec",
        "InputCodec",
        "RequestCodec",
        "register_input_codec",
        "register_request_codec",
        "find_input_codec",
        "find_request_codec",
        "decode_args",
        "encode_inference_response",
        "decode_inference_request",
        "encode_response_output",
        "decode_request_input",
        "has_decoded",
        "get_decoded",
        "get_decoded_or_raw",
        "DecodedParameterName",
        "CodecError",
        "CodecNotFound",
    ],
    # MLServer's module paths for the names its runtimes and examples import.
    "conveyor.utils": [
        "get_model_uri",
        "generate_uuid",
        "insert_headers",
        "extract_headers",
        "install_uvloop_event_loop",
    ],
    "conveyor.logging": ["logger"],
    "conveyor.handlers": ["custom_handler"],
    "conveyor.handlers.custom": ["custom_handler"],
    "conveyor.batching": ["BatchedRequests"],
    "conveyor.codecs.numpy": ["NumpyCodec", "NumpyRequestCodec", "to_datatype", "_encode_data"],
    # The schema (MLServer's module path), and what moved to conveyor.repository from it.
    "conveyor.settings": [
        "ModelSettings",
        "ModelParameters",
        "DEFAULT_MODEL_SETTINGS_FILENAME",
        "find_model_settings",
        "load_model_settings",
    ],
    "conveyor.repository": [
        "DEFAULT_MODEL_SETTINGS_FILENAME",
        "find_model_settings",
        "load_model_settings",
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_import(module: str) -> None:
    imported = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(imported, name)]
    assert missing == []


@pytest.mark.parametrize("module", ["conveyor", "conveyor.client", "conveyor.worker"])
def test_all_lists_exactly_the_public_names(module: str) -> None:
    imported = importlib.import_module(module)
    assert sorted(imported.__all__) == sorted(PUBLIC[module])


def test_names_moved_out_of_settings_are_the_repository_s() -> None:
    import conveyor.repository
    import conveyor.settings

    for name in conveyor.repository.__all__:
        assert getattr(conveyor.settings, name) is getattr(conveyor.repository, name)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        conveyor.settings.nothing  # noqa: B018


def test_model_methods_match_mlserver() -> None:
    from conveyor import ModelMethods

    assert {m.name: m.value for m in ModelMethods} == {
        "Predict": "predict",
        "Metadata": "metadata",
        "PredictStream": "predict_stream",
        "Load": "load",
        "Unload": "unload",
    }


def test_core_does_not_import_the_layers_above() -> None:
    import subprocess
    import sys

    code = (
        "import sys, conveyor, conveyor.codecs, conveyor.types, conveyor.utils,"
        " conveyor.logging, conveyor.handlers, conveyor.batching;"
        "bad = [m for m in sys.modules if m.startswith(('conveyor.client', 'conveyor.worker',"
        " 'conveyor.cli', 'conveyor.broker'))]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _drawn_tree() -> dict[str, str]:
    """conveyor.errors' docstring tree: each class drawn -> the class drawn above it."""
    import re

    import conveyor.errors

    parents: dict[str, str] = {}
    stack = ["ConveyorError"]
    for line in (conveyor.errors.__doc__ or "").splitlines():
        match = re.match(r"^ {4}([│ ]*)[├└]── (\w+)", line)
        if match:
            depth = len(match.group(1)) // 4 + 1
            del stack[depth:]
            parents[match.group(2)] = stack[-1]
            stack.append(match.group(2))
    return parents


def test_the_errors_tree_draws_every_conveyor_error() -> None:
    """Every ConveyorError subclass of every module is in conveyor.errors' tree, under a base."""
    import pkgutil

    from conveyor.errors import ConveyorError

    # Each part has its own folder (pyproject's package-dir): walk each.
    for suffix in ("", ".broker", ".worker", ".client", ".cli"):
        part = "conveyor" + suffix
        package = importlib.import_module(part)
        for info in pkgutil.walk_packages(package.__path__, part + "."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
    found: dict[str, type] = {}
    todo = [ConveyorError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("conveyor.") and not sub.__name__.startswith("_"):
                found[sub.__name__] = sub
            todo.append(sub)
    drawn = _drawn_tree()
    assert sorted(set(found) - set(drawn)) == [], "not drawn in conveyor.errors' docstring"
    assert sorted(set(drawn) - set(found)) == [], "drawn, but no such class"
    for name, parent in drawn.items():
        assert parent in [base.__name__ for base in found[name].__bases__], (name, parent)
