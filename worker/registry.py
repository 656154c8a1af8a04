"""The models one worker serves: loaded from its own model folders, never from a job."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field

import anyio

from conveyor.broker.keys import Keys
from conveyor.compiled import caused_by
from conveyor.errors import ModelLoadFailed
from conveyor.methods import exposed_methods
from conveyor.model import MLModel
from conveyor.settings import ModelSettings
from conveyor.worker.call_limit import CallLimit, Hold
from conveyor.worker.execution import call
from conveyor.worker.model_calls import instrument

__all__ = ("ModelLoadFailed", "ModelRegistry", "ServedModel")

logger = logging.getLogger(__name__)

_DEFAULT_PAYLOAD_LIMIT = ModelSettings.model_fields["max_payload_bytes"].default


@dataclass
class ServedModel:
    """One model folder of this worker, loaded or not."""

    settings: ModelSettings
    model: MLModel | None = None
    exposed: frozenset[str] = field(default_factory=frozenset)
    # the exposed methods that are ``async def`` (awaited directly; the others go through
    # execution.call), found once at load
    coroutines: frozenset[str] = field(default_factory=frozenset)
    failure: str | None = None  # why its last load left it not ready
    # the instance's call slots (worker.call_limit), made with each loaded instance
    calls: CallLimit = field(default_factory=lambda: CallLimit(None, 0))

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def version(self) -> str | None:
        return self.settings.version

    @property
    def ready(self) -> bool:
        return self.model is not None and bool(self.model.ready)


class ModelRegistry:
    """Loads, unloads and finds this worker's models.

    A call without a version is served by any loaded version of the model (MLServer serves
    such calls with its default version); a call with a version only by that version.
    """

    def __init__(self, settings: list[ModelSettings], keys: Keys) -> None:
        self._keys = keys
        self._served: dict[tuple[str, str | None], ServedModel] = {}
        for model_settings in settings:
            key = (model_settings.name, model_settings.version)
            if key in self._served:
                raise ValueError(
                    f"model {model_settings.name!r} version {model_settings.version!r} "
                    "is declared by two model folders"
                )
            self._served[key] = ServedModel(model_settings)
        # Each name's folders, the unversioned one first: what a call without a version finds.
        self._by_name: dict[str, list[ServedModel]] = {}
        for served in self._served.values():
            self._by_name.setdefault(served.name, []).append(served)
        for candidates in self._by_name.values():
            candidates.sort(key=lambda s: s.version is not None)
        self._load_limiter: anyio.CapacityLimiter | None = None

    def _limiter(self) -> anyio.CapacityLimiter:
        # Loads and unloads of plain `def` methods run one at a time, in a thread.
        if self._load_limiter is None:
            self._load_limiter = anyio.CapacityLimiter(1)
        return self._load_limiter

    def names(self) -> list[str]:
        return sorted({name for name, _ in self._served})

    def ready_names(self) -> list[str]:
        """The models this worker serves now (a version of them at least)."""
        return sorted({s.name for s in self._served.values() if s.ready})

    def failed_names(self) -> list[str]:
        """The models none of whose folders is ready, one of which did not load."""
        ready = set(self.ready_names())
        return sorted({s.name for s in self._served.values() if s.failure} - ready)

    def all(self) -> list[ServedModel]:
        return list(self._served.values())

    def find(self, name: str, version: str | None) -> ServedModel | None:
        """The ready model that serves a call to ``name`` (and ``version``), if any."""
        if version:
            served = self._served.get((name, version))
            return served if served is not None and served.ready else None
        for served in self._by_name.get(name, ()):
            model = served.model  # served.ready, inlined: this runs for every job
            if model is not None and model.ready:
                return served
        return None

    def job_streams(self) -> list[str]:
        """The job streams of every ready model: its own, and the any-version stream."""
        streams: list[str] = []
        for served in self._served.values():
            if not served.ready:
                continue
            for stream in (
                self._keys.jobs(served.name, served.version),
                self._keys.jobs(served.name),
            ):
                if stream not in streams:
                    streams.append(stream)
        return streams

    def all_job_streams(self) -> list[str]:
        """The job streams of every model folder of this worker, loaded or not."""
        names = [
            self._keys.jobs(served.name, version)
            for served in self._served.values()
            for version in (served.version, None)
        ]
        return list(dict.fromkeys(names))

    def payload_limit(self, model: str, version: str | None) -> int:
        """The ``max_payload_bytes`` of the folder that would run a job of ``model``."""
        served = self.find(model, version)
        if served is not None:
            return served.settings.max_payload_bytes
        limits = [s.settings.max_payload_bytes for s in self._served.values() if s.name == model]
        return max(limits, default=_DEFAULT_PAYLOAD_LIMIT)

    def smallest_payload_limit(self, model: str) -> int:
        limits = [s.settings.max_payload_bytes for s in self._served.values() if s.name == model]
        return min(limits, default=_DEFAULT_PAYLOAD_LIMIT)

    def holds(self, concurrency: int) -> dict[str, Hold]:
        """How many jobs of each ready model this worker should hold at once (models its
        ``concurrency`` alone bounds are absent), summed over the model's ready folders."""
        holds: dict[str, Hold] = {}
        unbounded: set[str] = set()
        for served in self._served.values():
            if not served.ready:
                continue
            hold = served.calls.hold(concurrency)
            if hold.wait_for >= concurrency:
                unbounded.add(served.name)
            other = holds.get(served.name)
            holds[served.name] = hold if other is None else other + hold
        return {name: hold for name, hold in holds.items() if name not in unbounded}

    def control_streams(self) -> list[str]:
        return [self._keys.control(name) for name in self.names()]

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self._served)

    def has_unloaded(self, name: str, version: str | None) -> bool:
        """Whether a folder of this worker could serve the call, but is not loaded now."""
        return any(
            n == name and (version is None or v == version) and not served.ready
            for (n, v), served in self._served.items()
        )

    async def load(self, name: str) -> bool:
        """Loads every folder of model ``name``; True when at least one is ready."""
        for served in self._served.values():
            if served.name == name and not served.ready:
                await _load(served, self._limiter())
        return any(s.ready for s in self._served.values() if s.name == name)

    async def load_all(self) -> None:
        for served in self._served.values():
            await _load(served, self._limiter())

    async def unload(self, name: str) -> bool:
        """Unloads every loaded folder of model ``name``; True when none is left ready."""
        for served in self._served.values():
            if served.name == name and served.model is not None:
                await _unload(served, self._limiter())
        return not any(s.ready for s in self._served.values() if s.name == name)

    async def unload_all(self) -> None:
        for served in self._served.values():
            if served.model is not None:
                await _unload(served, self._limiter())


async def _load(served: ServedModel, limiter: anyio.CapacityLimiter) -> None:
    """Loads one folder's model. Raises :class:`ModelLoadFailed` if ``load()`` raises; a
    ``load()`` that returns False leaves the model not ready (not served), said in one line."""
    implementation = served.settings.implementation
    try:
        model = implementation(served.settings)
        instrument(model)  # its calls in its model context (conveyor.log), timed
        ready = await call(model.load, limiter)
    except Exception as error:
        served.failure = f"load() raised {type(error).__name__}: {error}"
        raise caused_by(ModelLoadFailed(served.name, served.version, error), error) from error
    # MLServer's convention: load() returns readiness; a runtime may also set it itself.
    model.ready = bool(ready) if ready is not None else True
    served.model = model
    served.exposed = exposed_methods(model)
    served.coroutines = frozenset(
        name for name in served.exposed if inspect.iscoroutinefunction(getattr(model, name, None))
    )
    settings = served.settings
    stream = type(model).predict_stream
    own_stream = stream is not MLModel.predict_stream
    served.calls = CallLimit(
        settings.max_concurrent_calls,
        settings.max_batch_size,
        max_batch_time=settings.max_batch_time,
        concurrent="predict" in served.coroutines
        or (own_stream and inspect.isasyncgenfunction(stream)),
        default_stream=not own_stream and "predict" not in served.coroutines,
        label=served.name,
        inline=settings.inline_calls,
    )
    if not model.ready:
        served.failure = "load() returned False"
        logger.warning(
            "model.not_ready model=%s version=%s reason=load_returned_false: "
            "the model is not served; callers get ModelNotServed",
            served.name,
            served.version,
        )
        return
    served.failure = None
    logger.info("model.loaded model=%s version=%s", served.name, served.version)


async def _unload(served: ServedModel, limiter: anyio.CapacityLimiter) -> None:
    model = served.model
    served.model = None
    if model is not None:
        await call(model.unload, limiter)
        model.ready = False
    logger.info("model.unloaded model=%s version=%s", served.name, served.version)
