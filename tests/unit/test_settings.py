"""ModelSettings: MLServer's model-settings.json, loading from folders, and lazy imports."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from conveyor.errors import ModelSettingsError
from conveyor.model import MLModel
from conveyor.repository import find_model_settings, load_model_settings
from conveyor.settings import ModelParameters, ModelSettings
from conveyor.types import MetadataTensor

# MLServer's own tests/testdata/model-settings.json, plus keys MLServer ignores or keeps.
MLSERVER_SETTINGS = {
    "name": "sum-model",
    "implementation": "conveyor.model.MLModel",
    "max_batch_size": 10,
    "max_batch_time": 0.4,
    "versions": ["sum-model/v1.2.3"],
    "platform": "mlserver",
    "inputs": [
        {
            "datatype": "FP32",
            "name": "input-0",
            "shape": [128],
            "parameters": {"content_type": "np"},
        }
    ],
    "outputs": [{"datatype": "FP32", "name": "output-0", "shape": [1]}],
    "parameters": {"version": "v1.2.3", "uri": "./model.joblib", "my_key": 7},
    "cache_enabled": True,
    "parallel_workers": 2,
    "some_future_mlserver_key": {"x": 1},
}

MODEL_SOURCE = """
from conveyor.model import MLModel

class MyModel(MLModel):
    origin = {origin!r}

NOT_A_MODEL = 42
"""


class SumModel(MLModel):
    pass


def write_model(folder: Path, settings: object, **modules: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = settings if isinstance(settings, str) else json.dumps(settings)
    (folder / "model-settings.json").write_text(text)
    for module, source in modules.items():
        (folder / f"{module}.py").write_text(source)
    return folder


@pytest.fixture(autouse=True)
def forget_new_modules() -> Iterator[None]:
    """Model folders' modules (all called `mymodel`) must not leak from one test to the next."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_reads_every_mlserver_field(tmp_path: Path) -> None:
    settings = load_model_settings(write_model(tmp_path / "m", MLSERVER_SETTINGS))

    assert (settings.name, settings.platform) == ("sum-model", "mlserver")
    assert settings.version == "v1.2.3"
    assert (settings.max_batch_size, settings.max_batch_time) == (10, 0.4)
    assert settings.cache_enabled
    assert settings.versions == ["sum-model/v1.2.3"]
    assert settings.inputs[0] == MetadataTensor(
        name="input-0", datatype="FP32", shape=[128], parameters={"content_type": "np"}
    )
    assert settings.outputs[0].name == "output-0"
    assert settings.parameters is not None
    assert getattr(settings.parameters, "my_key") == 7  # noqa: B009  extras are kept
    assert settings.source == str(tmp_path / "m" / "model-settings.json")
    with pytest.warns(DeprecationWarning, match="parallel_workers"):
        assert settings.parallel_workers == 2


def test_conveyor_fields_default_and_validate() -> None:
    settings = ModelSettings(implementation="x.Y")
    assert settings.timeout == 60.0
    assert settings.max_deliveries == 3
    assert settings.max_queue_length is None
    assert settings.max_payload_bytes == 64 * 1024 * 1024
    with pytest.raises(ValueError, match="timeout"):
        ModelSettings(implementation="x.Y", timeout=0)


def test_name_and_uri_default_to_the_folder(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "iris", {"implementation": "x.Y"})

    settings = load_model_settings(folder)

    assert settings.name == "iris"
    assert settings.parameters is not None
    assert settings.parameters.uri == str(folder)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("model.joblib", "{folder}/model.joblib"),
        ("./sub/../model.joblib", "{folder}/model.joblib"),
        ("/abs/model.joblib", "/abs/model.joblib"),
        ("s3://bucket/model.joblib", "s3://bucket/model.joblib"),
    ],
)
def test_relative_uri_resolves_against_the_folder(tmp_path: Path, uri: str, expected: str) -> None:
    folder = write_model(tmp_path / "m", {"implementation": "x.Y", "parameters": {"uri": uri}})

    settings = load_model_settings(folder / "model-settings.json")

    assert settings.parameters is not None
    assert settings.parameters.uri == expected.format(folder=folder)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ('{"name": "m",\n  "implementation" "x.Y"}', r"invalid JSON at line 2, column 20"),
        ("[1, 2]", "expected a JSON object, got a JSON list"),
        ("{}", "field 'implementation': Field required"),
        (
            '{"implementation": "x.Y", "max_batch_size": "lots"}',
            r"field 'max_batch_size': Input should be a valid integer.*got 'lots'",
        ),
        (
            '{"implementation": "x.Y", "inputs": [{"name": "a", "shape": [1]}]}',
            r"field 'inputs.0.datatype': Field required",
        ),
    ],
)
def test_a_bad_file_says_which_file_and_what(
    tmp_path: Path, content: str | None, message: str
) -> None:
    if content is not None:
        write_model(tmp_path, content)

    with pytest.raises(ModelSettingsError, match=message) as caught:
        load_model_settings(tmp_path)

    assert str(tmp_path / "model-settings.json") in str(caught.value)


def test_implementation_is_imported_lazily_from_the_folder(tmp_path: Path) -> None:
    folder = write_model(
        tmp_path / "m",
        {"implementation": "mymodel.MyModel"},
        mymodel=MODEL_SOURCE.format(origin="m"),
    )
    path_before = list(sys.path)

    settings = load_model_settings(folder)
    assert "mymodel" not in sys.modules

    klass = settings.implementation
    assert issubclass(klass, MLModel)
    assert getattr(klass, "origin") == "m"  # noqa: B009
    assert settings.implementation is klass
    assert sys.path == path_before


def test_each_folder_gets_its_own_module_of_the_same_name(tmp_path: Path) -> None:
    for origin in ("a", "b"):
        write_model(
            tmp_path / origin,
            {"implementation": "mymodel.MyModel"},
            mymodel=MODEL_SOURCE.format(origin=origin),
        )

    first, second = find_model_settings([tmp_path])
    first_class = first.implementation

    assert getattr(second.implementation, "origin") == "b"  # noqa: B009
    assert getattr(first_class, "origin") == "a"  # noqa: B009


@pytest.mark.parametrize(
    ("implementation", "message"),
    [
        ("nomodule.MyModel", r"cannot import module 'nomodule'.*ModuleNotFoundError"),
        ("broken.MyModel", r"cannot import module 'broken'.*ZeroDivisionError"),
        ("mymodel.Missing", r"module 'mymodel' \(.*mymodel.py\) has no 'Missing'"),
        ("mymodel.NOT_A_MODEL", r"'mymodel.NOT_A_MODEL' is 42, not a subclass of conveyor.MLModel"),
        ("MyModel", r"'MyModel' is not an import path like 'module.ClassName'"),
    ],
)
def test_a_bad_implementation_says_what_failed(
    tmp_path: Path, implementation: str, message: str
) -> None:
    write_model(
        tmp_path,
        {"implementation": implementation},
        mymodel=MODEL_SOURCE.format(origin="x"),
        broken="1 / 0",
    )
    settings = load_model_settings(tmp_path)
    path_before = list(sys.path)

    with pytest.raises(ModelSettingsError, match=message) as caught:
        settings.implementation  # noqa: B018

    assert str(caught.value).startswith(str(tmp_path / "model-settings.json"))
    assert sys.path == path_before


def test_an_inline_class_is_kept_and_dumps_as_its_import_path() -> None:
    settings = ModelSettings(name="m", implementation=SumModel)

    assert settings.implementation is SumModel
    dumped = settings.model_dump()
    assert dumped["implementation"] == f"{__name__}.SumModel"
    assert ModelSettings.model_validate(dumped).implementation is SumModel


def test_an_inline_class_must_be_a_model() -> None:
    with pytest.raises(ModelSettingsError, match=r"'builtins.dict' is <class 'dict'>, not a sub"):
        ModelSettings(name="m", implementation=dict)


def test_implementation_setter_and_mlserver_source_key(tmp_path: Path) -> None:
    source = str(tmp_path / "model-settings.json")
    settings = ModelSettings.model_validate({"_source": source, "implementation": "x.Y"})
    assert settings.source == source

    settings.implementation = SumModel
    assert settings.implementation_ == f"{__name__}.SumModel"
    assert settings.implementation is SumModel


def test_find_searches_folders_of_folders(tmp_path: Path) -> None:
    write_model(tmp_path / "repo" / "a", {"implementation": "x.Y"})
    write_model(tmp_path / "repo" / "group" / "b" / "v1", {"name": "b", "implementation": "x.Y"})
    write_model(tmp_path / "repo" / ".hidden" / "c", {"implementation": "x.Y"})
    single = write_model(tmp_path / "single", {"implementation": "x.Y"})

    found = find_model_settings([tmp_path / "repo", single, tmp_path / "repo" / "a"])

    assert [s.name for s in found] == ["a", "b", "single"]


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ([], "no model-settings.json in this folder or below it"),
        (["a", "b"], r"model 'same' \(version None\) is also declared by .*a/model-settings.json"),
    ],
)
def test_find_fails_on_empty_or_ambiguous_repositories(
    tmp_path: Path, layout: list[str], message: str
) -> None:
    tmp_path.joinpath("empty").mkdir()
    for folder in layout:
        write_model(tmp_path / folder, {"name": "same", "implementation": "x.Y"})

    with pytest.raises(ModelSettingsError, match=message):
        find_model_settings([tmp_path])


def test_find_fails_on_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelSettingsError, match="nowhere: no such file or folder"):
        find_model_settings([tmp_path / "nowhere"])


def test_parameters_autogenerate_an_inference_pool_gid() -> None:
    assert ModelParameters().inference_pool_gid is None
    generated = ModelParameters(autogenerate_inference_pool_gid=True).inference_pool_gid
    assert generated is not None
    assert len(generated) == 36


# CONVEYOR_MODEL_* in the environment, as MLServer's MLSERVER_MODEL_*.


def test_settings_built_in_code_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_MODEL_NAME", "foo-model")
    monkeypatch.setenv("CONVEYOR_MODEL_VERSION", "v0.1.0")
    monkeypatch.setenv("CONVEYOR_MODEL_URI", "/mnt/models/my-model")
    monkeypatch.setenv("conveyor_model_implementation", "conveyor.MLModel")  # any case
    monkeypatch.setenv("CONVEYOR_MODEL_MAX_BATCH_SIZE", "8")

    settings = ModelSettings()
    settings.parameters = ModelParameters()

    assert settings.name == "foo-model"
    assert settings.implementation is MLModel
    assert settings.max_batch_size == 8
    assert (settings.version, settings.parameters.uri) == ("v0.1.0", "/mnt/models/my-model")
    # What the code gives wins over the environment.
    assert ModelSettings(name="bar", implementation=SumModel).name == "bar"


def test_without_an_implementation_anywhere_settings_are_invalid() -> None:
    with pytest.raises(ValidationError, match="implementation"):
        ModelSettings()


def test_a_model_folders_file_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_MODEL_NAME", "from-env")
    monkeypatch.setenv("CONVEYOR_MODEL_IMPLEMENTATION", "from.env.Model")
    monkeypatch.setenv("CONVEYOR_MODEL_URI", "/from/env")
    monkeypatch.setenv("CONVEYOR_MODEL_VERSION", "v-env")
    folder = write_model(
        tmp_path / "m",
        {"name": "m", "implementation": "conveyor.MLModel", "parameters": {"uri": "w.bin"}},
    )

    settings = load_model_settings(folder)

    assert (settings.name, settings.implementation_) == ("m", "conveyor.MLModel")
    assert settings.parameters is not None
    assert settings.parameters.uri == str(folder / "w.bin")
    # As MLServer: what the file leaves out, the environment may fill.
    assert settings.version == "v-env"


def test_a_file_without_parameters_takes_them_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As MLServer's repository (load_model_settings): parameters = ModelParameters().
    monkeypatch.setenv("CONVEYOR_MODEL_URI", "weights")
    folder = write_model(tmp_path / "m", {"implementation": "conveyor.MLModel"})

    settings = load_model_settings(folder)

    assert settings.parameters is not None
    assert settings.parameters.uri == str(folder / "weights")


def test_an_env_file_is_read_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "CONVEYOR_MODEL_NAME=dummy-name\n"
        "CONVEYOR_MODEL_IMPLEMENTATION=conveyor.MLModel\n"
        "CONVEYOR_MODEL_URI=dummy-uri\n"
    )
    monkeypatch.chdir(tmp_path)  # a .env in the working directory is not read by itself

    with pytest.raises(ValidationError):
        ModelSettings()
    settings = ModelSettings(_env_file=env_file)
    settings.parameters = ModelParameters(_env_file=env_file)

    assert settings.name == "dummy-name"
    assert settings.parameters.uri == "dummy-uri"
