"""The last errors each model answered in this process: the heartbeat's ``recent_errors``
field (documented in ``broker/fleet.py``).

Recorded where an error answer is made (worker.answers.error_message): only failed jobs pay,
a few appends under a lock; nothing is sent to Redis per job. The heartbeat thread serialises
the store only when it changed (:attr:`RecentErrors.changes`). Process-wide, like the run-time
histogram (worker.model_calls): one worker per process.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Final

__all__ = ("KEPT_PER_MODEL", "MESSAGE_CHARS", "RECENT_ERRORS", "RecentErrors")

KEPT_PER_MODEL: Final = 10
MESSAGE_CHARS: Final = 300  # a message is cut there (a traceback-sized one stays readable)
_ID_CHARS: Final = 100


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RecentErrors:
    """Each model's last :data:`KEPT_PER_MODEL` errors, oldest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, deque[tuple[float, str, str, str, str]]] = {}
        self.changes = 0  # counts records: the heartbeat re-serialises when it moved

    def record(self, model: str, request_id: str, kind: str, type_name: str, text: str) -> None:
        """One error answer: its job's model and request id, its error code (``kind``), the
        exception's type name and its message (cut to :data:`MESSAGE_CHARS`)."""
        entry = (
            time.time(),
            cut(request_id, _ID_CHARS),
            str(kind),
            cut(type_name, _ID_CHARS),
            cut(text, MESSAGE_CHARS),
        )
        with self._lock:
            kept = self._models.get(model)
            if kept is None:
                kept = self._models[model] = deque(maxlen=KEPT_PER_MODEL)
            kept.append(entry)
            self.changes += 1

    def field(self, offset: float = 0.0) -> str:
        """The heartbeat field: JSON ``{<model>: [{"t", "id", "kind", "type", "message"}]}``,
        times in unix seconds plus ``offset`` (Redis's clock minus ours)."""
        with self._lock:
            models = {model: list(kept) for model, kept in self._models.items()}
        document = {
            model: [
                {"t": round(t + offset, 3), "id": i, "kind": k, "type": y, "message": m}
                for t, i, k, y, m in kept
            ]
            for model, kept in models.items()
        }
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
            self.changes += 1


RECENT_ERRORS: Final = RecentErrors()
