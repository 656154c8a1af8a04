"""MLServer's ``mlserver.utils`` helpers that runtimes import: where a model's artefact is, ids,
and the headers carried in a request's (response's) parameters."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlparse

import anyio

from conveyor.errors import InvalidModelURI
from conveyor.logging import logger
from conveyor.settings import ModelSettings
from conveyor.types import InferenceRequest, InferenceResponse, Parameters

__all__ = (
    "extract_headers",
    "generate_uuid",
    "get_model_uri",
    "get_wrapped_method",
    "insert_headers",
    "install_uvloop_event_loop",
    "to_absolute_path",
)


async def get_model_uri(settings: ModelSettings, wellknown_filenames: Sequence[str] = ()) -> str:
    """Where the model's artefact is, as MLServer's ``get_model_uri``.

    ``parameters.uri`` is resolved against the folder of the settings' file (a relative path;
    an absolute one stays as it is; without a file, against the working directory). A file is
    returned as is. In a folder, the first of ``wellknown_filenames`` present in it is
    returned (e.g. ``["model.joblib", "model.pickle"]``), else the folder. A URI of another
    scheme than ``file`` (``s3://...``) is returned unchanged, for the runtime to fetch.

    Raises :class:`~conveyor.errors.InvalidModelURI` when the settings have no URI, or the path
    is neither a file nor a folder.
    """
    if settings.parameters is None or not settings.parameters.uri:
        raise InvalidModelURI(settings.name)
    components = urlparse(settings.parameters.uri, scheme="file")
    if components.scheme != "file":
        return settings.parameters.uri
    full_path = to_absolute_path(settings, components.path)
    # A slow disk (a network mount) must not stall the loop's other models.
    return await anyio.to_thread.run_sync(_find_artefact, settings, full_path, wellknown_filenames)


def _find_artefact(settings: ModelSettings, full_path: str, wellknown: Sequence[str]) -> str:
    if os.path.isfile(full_path):
        return full_path
    if os.path.isdir(full_path):
        for filename in wellknown:
            candidate = os.path.join(full_path, filename)
            if os.path.isfile(candidate):
                return candidate
        return full_path
    raise InvalidModelURI(settings.name, full_path)


def to_absolute_path(model_settings: ModelSettings, uri: str) -> str:
    """``uri`` joined to the folder of the settings' file (unchanged if they have no file)."""
    source = model_settings.source
    if source is None:
        return uri  # absolute, or relative to the working directory, as in MLServer
    return os.path.normpath(os.path.join(os.path.dirname(source), uri))


def generate_uuid() -> str:
    """A new random id (a UUID4, as text)."""
    return str(uuid.uuid4())


def get_wrapped_method(f: Callable[..., Any]) -> Callable[..., Any]:
    """The innermost function under decorators that set ``__wrapped__``."""
    while hasattr(f, "__wrapped__"):
        f = f.__wrapped__
    return f


def insert_headers(
    inference_request: InferenceRequest, headers: dict[str, str]
) -> InferenceRequest:
    """Puts ``headers`` into the request's ``parameters.headers`` (replacing what was there)."""
    if inference_request.parameters is None:
        inference_request.parameters = Parameters()
    parameters = inference_request.parameters
    if parameters.headers is not None:
        logger.warning(
            "the request's parameters.headers held %d entries, now replaced by the request's "
            "actual headers: parameters.headers is not for clients to set",
            len(parameters.headers),
        )
    parameters.headers = headers
    return inference_request


def extract_headers(inference_response: InferenceResponse) -> dict[str, str] | None:
    """Takes the headers out of the response's ``parameters.headers`` (leaving ``None``)."""
    parameters = inference_response.parameters
    if parameters is None or parameters.headers is None:
        return None
    headers = parameters.headers
    parameters.headers = None
    return headers


def install_uvloop_event_loop() -> None:
    """Makes asyncio use uvloop when it is installed, as MLServer does; else does nothing."""
    if type(asyncio.get_event_loop_policy()).__module__.startswith("uvloop"):
        return
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return
    uvloop.install()
    logger.debug("asyncio event loop policy: uvloop")
