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


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds Conveyor's key names under one prefix."""

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

    def job_stream_of(self, key: str) -> tuple[str, str | None] | None:
        """The (model, version) whose job stream ``key`` is (version None for the any-version
        stream); None if ``key`` is not a job stream under this prefix."""
        head = f"{self.prefix}:{{"
        if not (key.startswith(head) and key.endswith(":jobs")):
            return None
        model, _, rest = key[len(head) :].partition("}")
        version = rest.removeprefix(":v:").removesuffix(":jobs") if rest != ":jobs" else None
        if not model or version == "":
            return None
        return (model, version) if self.jobs(model, version) == key else None

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
