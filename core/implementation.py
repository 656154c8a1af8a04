"""Importing a model's implementation: the runtime class that ``model-settings.json`` names.

:attr:`ModelSettings.implementation <conveyor.settings.ModelSettings.implementation>` calls
:func:`import_implementation` the first time it is read. For settings read from a file, the
file's folder is put first on ``sys.path`` for the import (and only for it), so
``"mymodel.MyModel"`` finds the ``mymodel.py`` beside the file, even when another folder's
``mymodel`` was imported before. Only the module named by the import path is imported, and
what it names must be an :class:`~conveyor.model.MLModel` subclass.

Every failure is a :class:`~conveyor.errors.ModelSettingsError` that names ``where`` the
import path came from (the settings file, or the model's name) and what to do.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from conveyor.errors import ModelSettingsError
from conveyor.model import MLModel

__all__ = ("check_model_class", "import_implementation", "import_path_of")


def import_path_of(klass: type) -> str:
    """The import path that names ``klass``: ``module.QualifiedName``."""
    return f"{klass.__module__}.{klass.__qualname__}"


def import_implementation(import_path: str, folder: Path | None, where: str) -> type[MLModel]:
    """Imports the class ``import_path`` names (``module.Class`` or ``module:Class``).

    ``folder`` (the settings file's, if any) is searched first; ``where`` names the settings
    in error messages. Raises :class:`~conveyor.errors.ModelSettingsError`.
    """
    separator = ":" if ":" in import_path else "."
    module_name, _, attr = import_path.rpartition(separator)
    if not module_name or not attr:
        raise ModelSettingsError(
            f"{where}: implementation {import_path!r} is not an import path like 'module.ClassName'"
        )
    try:
        with _importing_from(folder, module_name):
            module = importlib.import_module(module_name)
    except Exception as exc:  # anything the module raises while it is imported
        raise ModelSettingsError(
            f"{where}: cannot import module {module_name!r} of implementation "
            f"{import_path!r}: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        klass = getattr(module, attr)
    except AttributeError as exc:
        raise ModelSettingsError(
            f"{where}: module {module_name!r} ({module.__file__}) has no {attr!r}, named by "
            f"implementation {import_path!r}: {exc}"
        ) from exc
    return check_model_class(klass, import_path, where)


def check_model_class(klass: object, import_path: str, where: str) -> type[MLModel]:
    """``klass`` if it is an :class:`~conveyor.model.MLModel` subclass, else raises
    :class:`~conveyor.errors.ModelSettingsError`."""
    if not (isinstance(klass, type) and issubclass(klass, MLModel)):
        raise ModelSettingsError(
            f"{where}: implementation {import_path!r} is {klass!r}, not a subclass of "
            "conveyor.MLModel (a runtime ported from MLServer imports MLModel from conveyor)"
        )
    return klass


@contextmanager
def _importing_from(folder: Path | None, module_name: str) -> Iterator[None]:
    """Puts ``folder`` first on ``sys.path`` while importing ``module_name``.

    If the folder holds the module's top-level package, a module of that name imported
    before from elsewhere (another model's ``mymodel.py``) is dropped from ``sys.modules``
    first, so this folder's is imported. The old module object stays alive for whatever
    uses it; MLServer reloads it in place instead, which changes the other model's code.
    """
    if folder is None:
        yield
        return
    entry = str(folder.resolve())
    top = module_name.partition(".")[0]
    if (folder / f"{top}.py").is_file() or (folder / top).is_dir():
        importlib.invalidate_caches()  # the folder may be newer than the import caches
        loaded = sys.modules.get(top)
        if loaded is not None and not _is_from(loaded, Path(entry)):
            for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
                del sys.modules[name]
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        # The first equal entry is ours, at the front, unless the import reordered sys.path.
        if entry in sys.path:
            sys.path.remove(entry)


def _is_from(module: ModuleType, folder: Path) -> bool:
    files = [getattr(module, "__file__", None), *getattr(module, "__path__", [])]
    return any(file and Path(file).resolve().is_relative_to(folder) for file in files)
