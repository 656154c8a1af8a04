"""The key layout: every Redis key Conveyor uses, in one place.

A model's keys share the hash tag ``{<model>}`` and a client's keys share ``{<client id>}``,
so every multi-key command stays inside one Redis Cluster slot.

| key                                         | type   | what                                   |
|---------------------------------------------|--------|----------------------------------------|
| ``<p>:{<model>}:jobs``                      | stream | jobs for the model, any version         |
| ``<p>:{<model>}:v:<version>:jobs``          | stream | jobs for one version of the model       |
| ``<p>:{<model>}:dead``                      | stream | dead letters: reason, attempts, error   |
| ``<p>:{<model>}:control``                   | stream | load / unload / cancel requests         |
| ``<p>:{<model>}:limits``                    | hash   | limits clients enforce (queue length)   |
| ``<p>:reply:{<client>}:<request id>``       | stream | result, or chunks + end, or error; TTL  |
| ``<p>:in:{<client>}:<request id>``          | stream | inputs of one predict_stream; TTL       |
| ``<p>:credit:{<client>}:<request id>``      | list   | chunks a predict_stream caller took     |
| ``<p>:claim:{<client>}:<request id>``       | string | the job copy that runs the request; TTL |
| ``<p>:bell:{<client>}``                     | list   | small answers, or request ids whose     |
|                                             |        | reply stream has news; TTL              |
| ``<p>:worker:<worker id>``                  | hash   | a worker's heartbeat; TTL               |
| ``<p>:workers``                             | zset   | worker ids by last heartbeat (unix s)   |
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("DEFAULT_PREFIX", "GROUP", "Keys", "hash_tag", "is_client_id")

DEFAULT_PREFIX = "conveyor"
GROUP = "workers"  # the one consumer group of every job stream


def is_client_id(text: str) -> bool:
    """Whether ``text`` can be a client id: non-empty printable text without spaces (it names
    the client's connections) or braces (it is its keys' hash tag: a brace would move them to
    another Redis Cluster slot)."""
    return bool(text) and text.isprintable() and not (" " in text or "{" in text or "}" in text)


def hash_tag(key: str) -> str:
    """A key's hash tag, the part between the first { and the next } (a job stream's model);
    the whole key when it has none."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if 0 <= start < end else key


@dataclass(frozen=True)
class Keys:
    """Builds Conveyor's key names under one prefix, and parses them back (``*_of``)."""

    prefix: str = DEFAULT_PREFIX

    def jobs(self, model: str, version: str | None = None) -> str:
        if version:
            return f"{self.prefix}:{{{model}}}:v:{version}:jobs"
        return f"{self.prefix}:{{{model}}}:jobs"

    def dead(self, model: str) -> str:
        return f"{self.prefix}:{{{model}}}:dead"

    def limits(self, model: str) -> str:
        return f"{self.prefix}:{{{model}}}:limits"

    def control(self, model: str) -> str:
        return f"{self.prefix}:{{{model}}}:control"

    def reply(self, client_id: str, request_id: str) -> str:
        return f"{self.prefix}:reply:{{{client_id}}}:{request_id}"

    def inputs(self, client_id: str, request_id: str) -> str:
        return f"{self.prefix}:in:{{{client_id}}}:{request_id}"

    def credit(self, client_id: str, request_id: str) -> str:
        return f"{self.prefix}:credit:{{{client_id}}}:{request_id}"

    def claim(self, client_id: str, request_id: str) -> str:
        return f"{self.prefix}:claim:{{{client_id}}}:{request_id}"

    def bell(self, client_id: str) -> str:
        return f"{self.prefix}:bell:{{{client_id}}}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def workers(self) -> str:
        return f"{self.prefix}:workers"

    # --- parsing: each the inverse of a builder above, None for any other key ---------------
    # A key is parsed, then built again from what was found and compared with itself, so only
    # a key a builder makes under this prefix is taken (never a look-alike).

    def job_stream_of(self, key: str) -> tuple[str, str | None] | None:
        """The (model, version) whose job stream ``key`` is (version None for the any-version
        stream); None if ``key`` is not a job stream under this prefix."""
        found = self._model_key(key)
        if found is None or not found[1].endswith(":jobs"):
            return None
        model, rest = found
        version = rest.removeprefix(":v:").removesuffix(":jobs") if rest != ":jobs" else None
        if version == "":
            return None
        return (model, version) if self.jobs(model, version) == key else None

    def dead_stream_of(self, key: str) -> str | None:
        """The model whose dead-letter stream ``key`` is; None for any other key."""
        found = self._model_key(key)
        return found[0] if found is not None and self.dead(found[0]) == key else None

    def control_stream_of(self, key: str) -> str | None:
        """The model whose control stream ``key`` is; None for any other key."""
        found = self._model_key(key)
        return found[0] if found is not None and self.control(found[0]) == key else None

    def reply_of(self, key: str) -> tuple[str, str] | None:
        """The (client id, request id) whose reply stream ``key`` is; None for any other key."""
        found = self._client_key("reply", key)
        return found if found is not None and self.reply(*found) == key else None

    def bell_of(self, key: str) -> str | None:
        """The client id whose doorbell ``key`` is; None for any other key."""
        head = f"{self.prefix}:bell:{{"
        if not (key.startswith(head) and key.endswith("}")):
            return None
        client_id = key[len(head) : -1]
        return client_id if is_client_id(client_id) else None

    def worker_of(self, key: str) -> str | None:
        """The worker id whose heartbeat hash ``key`` is; None for any other key."""
        head = f"{self.prefix}:worker:"
        return key[len(head) :] if key.startswith(head) and len(key) > len(head) else None

    def _model_key(self, key: str) -> tuple[str, str] | None:
        """(model, what follows its hash tag) of ``<p>:{<model>}...``; None for other keys."""
        head = f"{self.prefix}:{{"
        if not key.startswith(head):
            return None
        model, brace, rest = key[len(head) :].partition("}")
        return (model, rest) if model and brace else None

    def _client_key(self, kind: str, key: str) -> tuple[str, str] | None:
        """(client id, request id) of ``<p>:<kind>:{<client id>}:<request id>``."""
        head = f"{self.prefix}:{kind}:{{"
        if not key.startswith(head):
            return None
        client_id, sep, request_id = key[len(head) :].partition("}:")
        if not (sep and request_id and is_client_id(client_id)):
            return None
        return client_id, request_id

    def client_of_reply(self, key: bytes, request_id: bytes) -> str | None:
        """The client id of ``key`` when it is the reply stream of ``request_id`` under this
        prefix (``<p>:reply:{<client id>}:<request id>``, as read from Redis); else None."""
        head, tail = b"%s:reply:{" % self.prefix.encode(), b"}:" + request_id
        if not (key.startswith(head) and key.endswith(tail)):
            return None
        try:
            client_id = key[len(head) : len(key) - len(tail)].decode()
        except UnicodeDecodeError:
            return None
        return client_id if is_client_id(client_id) else None

    def job_streams_pattern(self) -> str:
        """A SCAN pattern matching every job stream (for inspection)."""
        return f"{self.prefix}:{{*}}:*jobs"
