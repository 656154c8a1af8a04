"""A model repository: the folders that hold ``model-settings.json`` files, as MLServer's.

:func:`find_model_settings` walks folders for every ``model-settings.json`` (what a worker is
asked to serve); :func:`load_model_settings` reads one folder's, defaulting the model's name to
the folder's and its URI to the folder, as MLServer's repository does. The schema itself is
:mod:`conveyor.settings`; importing the class a file names is :mod:`conveyor.implementation`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

from conveyor.errors import ModelSettingsError
from conveyor.settings import ModelParameters, ModelSettings

__all__ = (
    "DEFAULT_MODEL_SETTINGS_FILENAME",
    "find_model_settings",
    "load_model_settings",
)

logger = logging.getLogger(__name__)

DEFAULT_MODEL_SETTINGS_FILENAME = "model-settings.json"


def load_model_settings(path: str | os.PathLike[str]) -> ModelSettings:
    """Reads a model folder's ``model-settings.json`` (or the file itself, if given).

    As MLServer's model repository: the name defaults to the folder's name, and the URI to
    the folder. A relative ``parameters.uri`` (one without a scheme such as ``s3://``) is made
    absolute against the folder. The implementation is not imported yet.
    Raises :class:`~conveyor.errors.ModelSettingsError`.
    """
    file = Path(path)
    if file.is_dir():
        file = file / DEFAULT_MODEL_SETTINGS_FILENAME
    settings = ModelSettings.parse_file(file)
    folder = Path(settings.source or file).parent

    if not settings.name:
        settings.name = folder.name
    elif not _folder_matches(folder.name, settings):
        logger.warning(
            "model_settings.name_mismatch model=%s folder=%s file=%s",
            settings.name,
            folder.name,
            settings.source,
        )

    if settings.parameters is None:
        settings.parameters = ModelParameters()
    settings.parameters.uri = _resolve_uri(settings.parameters.uri, folder)
    return settings


def find_model_settings(paths: Iterable[str | os.PathLike[str]]) -> list[ModelSettings]:
    """Loads every model under ``paths``: model folders, or folders of model folders.

    Each folder is searched recursively for ``model-settings.json`` (hidden folders are
    skipped, as MLServer's glob does); a path may also be the file itself. A file reached
    twice is loaded once. Unlike MLServer, which logs and skips a broken file, this fails:
    a worker should not start without a model it was asked to serve.

    Raises :class:`~conveyor.errors.ModelSettingsError` if a path does not exist, holds no
    model-settings.json, a file is invalid, or two files declare the same name and version.
    """
    found: list[ModelSettings] = []
    seen_files: set[str] = set()
    seen_models: dict[tuple[str, str | None], str] = {}
    for path in paths:
        for file in _settings_files(Path(path)):
            if str(file) in seen_files:
                continue
            seen_files.add(str(file))
            settings = load_model_settings(file)
            key = (settings.name, settings.version)
            if key in seen_models:
                raise ModelSettingsError(
                    f"{settings.source}: model {settings.name!r} (version {settings.version}) "
                    f"is also declared by {seen_models[key]}; rename one of them"
                )
            seen_models[key] = str(settings.source)
            found.append(settings)
    return found


def _settings_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path.resolve()]
    if not path.is_dir():
        raise ModelSettingsError(f"{path}: no such file or folder")
    files: list[Path] = []
    for folder, dirs, names in os.walk(path.resolve()):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if DEFAULT_MODEL_SETTINGS_FILENAME in names:
            files.append(Path(folder, DEFAULT_MODEL_SETTINGS_FILENAME))
    if not files:
        raise ModelSettingsError(
            f"{path}: no {DEFAULT_MODEL_SETTINGS_FILENAME} in this folder or below it"
        )
    return files


def _folder_matches(folder_name: str, settings: ModelSettings) -> bool:
    # As MLServer (and Triton): a model's folder is named for the model or for its version.
    return folder_name in (settings.name, settings.version)


def _resolve_uri(uri: str | None, folder: Path) -> str:
    if not uri:
        return str(folder)
    if urlparse(uri).scheme:
        return uri  # s3://, gs://, file://...: the runtime's business
    return os.path.normpath(folder / uri)
