"""A model's settings, read from MLServer's ``model-settings.json``.

Every field MLServer's ``ModelSettings`` and ``ModelParameters`` have is accepted, so an
existing file loads unchanged; unknown keys are ignored, as MLServer does. Conveyor adds a few
fields of its own (timeout, deliveries, queue and payload limits), each optional.

As MLServer's (which read ``MLSERVER_MODEL_*``), ``ModelSettings()`` and ``ModelParameters()``
built in code read ``CONVEYOR_MODEL_*`` environment variables (``CONVEYOR_MODEL_NAME``,
``CONVEYOR_MODEL_IMPLEMENTATION``, ``CONVEYOR_MODEL_URI``, ``CONVEYOR_MODEL_VERSION``, ...) for the
fields they are not given. Settings read from a ``model-settings.json`` take nothing from the
environment, except a file without ``parameters``: those are built with ``ModelParameters()``,
as MLServer's repository does. Unlike MLServer, no ``.env`` file is read unless asked for
(``_env_file=``): a stray ``.env`` in a worker's folder would change every model it serves.

This module is the schema only: finding and reading the files of a model folder is
:mod:`conveyor.repository` (``find_model_settings``, ``load_model_settings``, still importable
from here), and importing the class ``implementation`` names is :mod:`conveyor.implementation`.
"""

from __future__ import annotations

import inspect
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from conveyor.errors import ModelSettingsError
from conveyor.implementation import check_model_class, import_implementation, import_path_of
from conveyor.types import MetadataTensor

if TYPE_CHECKING:
    from conveyor.model import MLModel
    from conveyor.repository import (
        DEFAULT_MODEL_SETTINGS_FILENAME as DEFAULT_MODEL_SETTINGS_FILENAME,
    )
    from conveyor.repository import find_model_settings as find_model_settings
    from conveyor.repository import load_model_settings as load_model_settings

__all__ = ("ModelParameters", "ModelSettings")

# MLServer's is MLSERVER_MODEL_.
ENV_PREFIX_MODEL_SETTINGS = "CONVEYOR_MODEL_"

# 64 MiB: well under Redis' 512 MB bulk-string limit, and big enough for most tensors.
_DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024


# The keyword arguments that steer pydantic-settings' sources (`_env_file`, ...).
_SOURCE_ARGUMENTS = frozenset(inspect.signature(BaseSettings.__init__).parameters) - {
    "__pydantic_self__",
    "values",
}


class _ModelEnvSettings(BaseSettings):
    """pydantic-settings, without its cost where there is nothing to read.

    Its sources analyse every field on each construction (~0.5 ms here, where a plain model
    takes ~6 us). No ``.env`` file is read by default, so with no ``CONVEYOR_MODEL_*``
    variable set and no source argument given, validating the values alone is the same.
    """

    def __init__(self, **values: Any) -> None:
        if _SOURCE_ARGUMENTS.isdisjoint(values) and not any(
            name.upper().startswith(ENV_PREFIX_MODEL_SETTINGS) for name in os.environ
        ):
            BaseModel.__init__(self, **values)
        else:
            super().__init__(**values)


class ModelParameters(_ModelEnvSettings):
    """Settings of one instance (e.g. one version) of a model, as in MLServer.

    Unknown keys are kept (``extra="allow"``), since MLServer runtimes read their own
    ones with ``getattr(settings.parameters, "my_key", default)``. Built in code, it reads
    ``CONVEYOR_MODEL_URI``, ``CONVEYOR_MODEL_VERSION``, ... for the fields it is not given.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX_MODEL_SETTINGS, extra="allow")

    uri: str | None = None
    """Where the model's artefacts are; a relative path is relative to the settings' folder."""

    version: str | None = None
    """Version of the model."""

    environment_path: str | None = None
    """MLServer: a Python environment to load the model in. Kept; Conveyor ignores it."""

    environment_tarball: str | None = None
    """MLServer: a tarball of that environment. Kept; Conveyor ignores it."""

    inference_pool_gid: str | None = None
    """MLServer: the inference pool group to serve the model in. Kept; Conveyor ignores it."""

    autogenerate_inference_pool_gid: bool = False
    """MLServer: generate ``inference_pool_gid`` (a UUID) when it is not set."""

    format: str | None = None
    """Format of the model's artefacts (only some runtimes read it)."""

    content_type: str | None = None
    """Default content type of requests and responses."""

    # Arbitrary JSON, read by the runtime itself: typed as what json.load returns.
    extra: dict[str, Any] | None = Field(default_factory=dict)
    """Runtime-specific settings."""

    @model_validator(mode="after")
    def _autogenerate_inference_pool_gid(self) -> Self:
        if self.autogenerate_inference_pool_gid and self.inference_pool_gid is None:
            self.inference_pool_gid = str(uuid.uuid4())
        return self


class ModelSettings(_ModelEnvSettings):
    """What MLServer's ``model-settings.json`` holds, plus Conveyor's own limits.

    ``implementation`` is a property: it imports the class named by the file the first time
    it is read (see :attr:`implementation`). Dumps use ``"implementation"`` as the key, so a
    dump loads back. Built in code, it reads ``CONVEYOR_MODEL_NAME``,
    ``CONVEYOR_MODEL_IMPLEMENTATION``, ... for the fields it is not given.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX_MODEL_SETTINGS, extra="ignore", serialize_by_alias=True
    )

    # The file these settings came from (absolute), as MLServer's `_source`.
    _source: str | None = PrivateAttr(default=None)
    # The imported class, with the import path it was imported for.
    _resolved: tuple[str, type[MLModel]] | None = PrivateAttr(default=None)

    # The import path of the runtime class: read it through `implementation`, which imports
    # it. The name (with its trailing underscore) and the aliases are MLServer's: the env
    # variable is named explicitly, since env_prefix does not apply to an alias.
    implementation_: str = Field(
        validation_alias=AliasChoices("implementation", "CONVEYOR_MODEL_IMPLEMENTATION"),
        serialization_alias="implementation",
    )

    name: str = ""
    """Name of the model; when loaded from a folder, defaults to the folder's name."""

    platform: str = ""
    """Framework the model was trained with (e.g. ``sklearn``), reported by ``metadata()``."""

    versions: list[str] = Field(default_factory=list)
    """Versions of the dependencies the model was trained with (e.g. ``sklearn/1.4.0``)."""

    inputs: list[MetadataTensor] = Field(default_factory=list)
    """Metadata of the inputs the model accepts; their content types steer decoding."""

    outputs: list[MetadataTensor] = Field(default_factory=list)
    """Metadata of the outputs the model returns; their content types steer encoding."""

    parallel_workers: int | None = Field(
        default=None,
        deprecated="MLServer's per-model parallel_workers: Conveyor scales by running workers",
    )

    warm_workers: bool = Field(
        default=False,
        deprecated="MLServer's warm_workers: Conveyor's workers load their models at start",
    )

    max_batch_size: int = 0
    """Adaptive batching: most requests grouped into one ``predict`` (0 disables it)."""

    max_batch_time: float = 0.0
    """Adaptive batching: seconds to wait for a batch to fill."""

    parameters: ModelParameters | None = None
    """Settings of this instance of the model."""

    cache_enabled: bool = False
    """MLServer: cache this model's predictions. Kept; Conveyor does not cache."""

    # --- Conveyor's own fields -----------------------------------------------------------

    timeout: float = Field(default=60.0, gt=0)
    """Seconds a client waits for an answer when the call gives no timeout of its own."""

    max_deliveries: int = Field(default=3, ge=1)
    """Deliveries of a job (first one included) before it is dead-lettered; a worker that
    dies mid-job causes a redelivery."""

    max_queue_length: int | None = Field(default=None, ge=1)
    """Most jobs waiting in the model's queue; a client's call beyond it fails with
    ``QueueFull``. ``None``: unbounded."""

    max_payload_bytes: int = Field(default=_DEFAULT_MAX_PAYLOAD_BYTES, ge=1)
    """Largest encoded request or response accepted, in bytes (default 64 MiB)."""

    max_concurrent_calls: int | None = Field(default=None, ge=1)
    """Calls one instance of the model takes at once (an adaptive batch is one call).
    ``None``: a plain ``def`` method one at a time, an ``async def`` one without limit;
    adaptive batching one batch at a time. More concurrency comes from more worker processes.
    Ray Serve's ``max_ongoing_requests`` / ``max_concurrent_batches`` are the nearest names."""

    inline_calls: bool = True
    """Whether a plain ``def`` method's calls may run on the worker's event loop when they are
    short and hold the GIL (the worker decides from the last calls' times). ``False``: always
    in a thread, for a model that must not run on the loop's thread."""

    @model_validator(mode="wrap")
    @classmethod
    def _take_source_and_class(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        # MLServer accepts `_source` as a key and a class as `implementation`; neither is a
        # field, so take them out before validating and put them on the instance after.
        source: object = None
        klass: type | None = None
        if isinstance(data, dict):
            data = dict(data)
            source = data.pop("_source", None)
            if isinstance(data.get("implementation"), type):
                klass = data["implementation"]
                data["implementation"] = import_path_of(klass)
        settings = handler(data)
        if source is not None:
            settings._source = str(source)
        if klass is not None:
            settings.implementation = klass
        return settings

    @classmethod
    def parse_file(cls, path: str | os.PathLike[str]) -> Self:  # type: ignore[override]
        """Reads one ``model-settings.json``, as MLServer's ``ModelSettings.parse_file``.

        Unlike :func:`conveyor.repository.load_model_settings`, it does not default the name
        or the URI.
        Raises :class:`~conveyor.errors.ModelSettingsError` naming the file and the problem.
        """
        source = os.path.abspath(path)
        try:
            with open(source, encoding="utf-8") as file:
                obj = json.load(file)
        except FileNotFoundError as exc:
            raise ModelSettingsError(f"{source}: no such file") from exc
        except json.JSONDecodeError as exc:
            raise ModelSettingsError(
                f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelSettingsError(f"{source}: cannot read: {exc}") from exc
        if not isinstance(obj, dict):
            raise ModelSettingsError(
                f"{source}: expected a JSON object, got a JSON {type(obj).__name__}"
            )
        try:
            return cls.model_validate({**obj, "_source": source})
        except ValidationError as exc:
            raise ModelSettingsError(f"{source}: {_describe(exc)}") from exc

    @property
    def source(self) -> str | None:
        """The absolute path of the file these settings were read from, if any."""
        return self._source

    @property
    def version(self) -> str | None:
        """The model's version, from ``parameters.version``."""
        return self.parameters.version if self.parameters is not None else None

    @property
    def implementation(self) -> type[MLModel]:
        """The runtime class, imported the first time this is read (see
        :mod:`conveyor.implementation`).

        For settings read from a file, the file's folder is put first on ``sys.path`` for
        the import (and only for it), so ``"mymodel.MyModel"`` finds the ``mymodel.py``
        beside the file, even when another folder's ``mymodel`` was imported before.
        Only the module named by ``implementation`` is imported.

        Raises :class:`~conveyor.errors.ModelSettingsError` if the import fails or the
        object is not an :class:`~conveyor.model.MLModel` subclass.
        """
        if self._resolved is not None and self._resolved[0] == self.implementation_:
            return self._resolved[1]
        folder = Path(self._source).parent if self._source else None
        klass = import_implementation(self.implementation_, folder, self._where())
        self._resolved = (self.implementation_, klass)
        return klass

    @implementation.setter
    def implementation(self, value: type[MLModel]) -> None:
        import_path = import_path_of(value)
        check_model_class(value, import_path, self._where())
        self.implementation_ = import_path
        self._resolved = (import_path, value)

    def _where(self) -> str:
        return self._source or f"settings of model {self.name!r}"


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "(the whole object)"
        problem = f"field {field!r}: {error['msg']}"
        if error["type"] != "missing":
            got = repr(error["input"])
            problem += f" (got {got if len(got) <= 60 else got[:57] + '...'})"
        problems.append(problem)
    return "invalid model settings: " + "; ".join(problems)


# Folder discovery moved to conveyor.repository; these names were importable from here and
# stay so. Looked up on first use (PEP 562): conveyor.repository imports this module.
_MOVED = frozenset(
    {"DEFAULT_MODEL_SETTINGS_FILENAME", "find_model_settings", "load_model_settings"}
)


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from conveyor import repository

    return getattr(repository, name)
