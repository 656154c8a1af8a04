"""Where Redis is: one URL, parsed once into :class:`RedisSettings`, and shown without its password.

``CONVEYOR_REDIS_URL`` names the server (:func:`default_redis_url`; nothing else reads it).
:meth:`RedisSettings.from_url` parses it once and refuses a malformed URL with
:class:`~conveyor.errors.InvalidRedisURL`; every log line and error shows
:attr:`RedisSettings.redacted_url`, or :func:`redact_url` of a URL that could not be parsed.
Making clients from the settings is :mod:`conveyor.broker.clients`.

URL forms (``user:password@`` is optional everywhere; percent-encode special characters)::

    redis://[user[:password]@]host[:port][/db]
    rediss://[user[:password]@]host[:port][/db][?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required]
    unix://[user[:password]@]/path/to/redis.sock[?db=N]

Query options (any URL): ``db``, ``socket_timeout``, ``socket_connect_timeout``,
``max_connections``, ``pool_timeout``, ``retries``, ``health_check_interval``,
``client_name`` and ``cluster`` (reserved); TLS only (``rediss://``): ``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs`` (``none``, ``optional`` or ``required``)
and ``ssl_check_hostname``. Unknown options are an error, not ignored.
"""

from __future__ import annotations

import os
import re
from typing import Literal, Self
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from conveyor.errors import InvalidRedisURL

__all__ = (
    "DEFAULT_REDIS_URL",
    "InvalidRedisURL",
    "RedisSettings",
    "default_redis_url",
    "redact_url",
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

_SCHEMES = ("redis", "rediss", "unix")
_QUERY_OPTIONS = frozenset(
    {
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "max_connections",
        "health_check_interval",
        "client_name",
        "retries",
        "pool_timeout",
        "cluster",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_cert_reqs",
        "ssl_check_hostname",
    }
)
_TLS_OPTIONS = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)


def default_redis_url() -> str:
    """``CONVEYOR_REDIS_URL``, else ``redis://127.0.0.1:6379/0``. The only reader of that
    variable: processes call it once, at start-up, and pass the settings down."""
    return os.environ.get("CONVEYOR_REDIS_URL") or DEFAULT_REDIS_URL


_QUERY_SECRET = re.compile(r"((?:^|[?&;])[^=&;]*pass[^=&;]*=)[^&;#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``; safe on malformed URLs.

    For logs and errors about a URL that was not (or could not be) parsed; a parsed
    :class:`RedisSettings` has :attr:`RedisSettings.redacted_url`. The authority is found by
    ``urllib.parse.urlsplit``. When an ``@`` comes after it (a password holding an unencoded
    ``/``, ``?`` or ``#`` ends the authority early), everything up to the last ``@`` counts as
    the user part: it hides more, never less.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _QUERY_SECRET.sub(r"\1***", url)
    try:
        netloc: str | None = urlsplit(url).netloc
    except ValueError:  # e.g. an unbalanced "["
        netloc = None
    after = rest[len(netloc) :] if netloc is not None and rest.startswith(netloc) else None
    if netloc is not None and after is not None and "@" not in after:
        userinfo, at, host = netloc.rpartition("@")
    else:  # ambiguous, or no parse: the user part runs to the last "@" of the URL
        userinfo, at, after = rest.rpartition("@")
        host = ""
    if at:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:***" if colon else user
    return f"{scheme}://{userinfo}{at}{host}" + _QUERY_SECRET.sub(r"\1***", after)


class RedisSettings(BaseModel):
    """Where Redis is and how we talk to it: parsed once from a URL, then passed down.

    The password is a ``SecretStr``: it shows in no ``repr``, ``str`` or :attr:`redacted_url`.
    Every default is documented beside its field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    scheme: Literal["redis", "rediss", "unix"] = "redis"
    host: str = "127.0.0.1"
    port: int = Field(default=6379, ge=1, le=65535)
    path: str | None = None  # the socket of a unix:// URL
    db: int = Field(default=0, ge=0)
    username: str | None = None  # an ACL user; None is Redis's "default" user
    password: SecretStr | None = None

    # TLS (rediss:// only). ssl_ca_certs=None trusts the system's CAs.
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None  # a client certificate, for tls-auth-clients yes
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["none", "optional", "required"] = "required"
    ssl_check_hostname: bool = True  # ignored (off) when ssl_cert_reqs is "none"

    # Seconds to open a connection (TCP + TLS + AUTH); failures are retried, see `retries`.
    socket_connect_timeout: float = Field(default=5.0, gt=0)
    # Seconds to wait for a reply on a command connection: a 100 MiB payload over 100 Mbit/s
    # takes ~8.4 s. Never use a command client for BLOCK: see create_client(blocking=True).
    socket_timeout: float = Field(default=10.0, gt=0)
    # The same for blocking connections (BLMPOP, XREADGROUP BLOCK). None: socket_timeout plus
    # the longest BLOCK the client sends (create_client's max_block), so a BLOCK always ends
    # before its read times out (DESIGN.md), and a server that stops answering is noticed.
    # Blocking clients never retry a timeout, so a BLOCK is never silently re-sent.
    blocking_socket_timeout: float | None = Field(default=None, gt=0)
    # Retries of a command after a connection error (or a timeout, on command connections),
    # with exponential backoff and jitter from retry_backoff_base up to retry_backoff_cap s.
    # Worst case for one command: (retries + 1) * (connect or socket timeout) + backoffs.
    retries: int = Field(default=3, ge=0)
    retry_backoff_base: float = Field(default=0.05, gt=0)
    retry_backoff_cap: float = Field(default=1.0, gt=0)
    # PING a connection idle longer than this (s) before reusing it; 0 turns it off.
    health_check_interval: float = Field(default=30.0, ge=0)
    # Connections per client (pool). A command waits up to pool_timeout s for a free one,
    # then fails with BrokerConnectionError; redis-py's own default is 100 and fails at once.
    max_connections: int = Field(default=50, ge=1)
    pool_timeout: float = Field(default=10.0, gt=0)
    client_name: str | None = None  # CLIENT SETNAME on connect (needs that ACL permission)
    # Redis Cluster (`?cluster=true`): the URL names one node; redis-py's cluster client
    # discovers the others and routes each command to the node of its key's slot.
    cluster: bool = False

    @model_validator(mode="after")
    def _check_scheme(self) -> Self:
        if self.scheme == "unix" and not self.path:
            raise ValueError("a unix:// URL needs a socket path: unix:///path/to/redis.sock")
        if self.scheme != "rediss":
            given = [name for name in _TLS_OPTIONS if name in self.model_fields_set]
            if given:
                raise ValueError(f"TLS options {', '.join(given)} need a rediss:// URL")
        return self

    @classmethod
    def from_url(cls, url: str) -> RedisSettings:
        """Parse a ``redis://``, ``rediss://`` or ``unix://`` URL (forms in the module doc).

        Raises:
            InvalidRedisURL: (a ``ValueError``) the URL is malformed or has an unknown option;
                the message shows the URL without its password.
        """
        shown = redact_url(url)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            # urllib's message can quote a piece of the URL ("... as 'Pw-7'"): never show it
            reason = str(exc).partition(" as ")[0]
            raise InvalidRedisURL(
                f"invalid Redis URL {shown}: {reason} (percent-encode any /, ?, #, @ or : in "
                "the user name and password, e.g. ? as %3F)"
            ) from None
        rest = url.partition("://")[2]
        tail = rest[len(parts.netloc) :] if rest.startswith(parts.netloc) else rest
        if "@" not in parts.netloc and "@" in tail.partition("=")[0]:
            # "u:12/3@host": urllib ends the host part at the "/", so the password would be
            # read as a host and path: refuse rather than connect somewhere unexpected
            raise InvalidRedisURL(
                f"invalid Redis URL {shown}: an '@' after the host part; percent-encode any "
                "/, ?, # or @ in the user name and password (e.g. ? as %3F, @ as %40)"
            )
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise InvalidRedisURL(
                f"invalid Redis URL {shown}: scheme {scheme!r} is not one of "
                "redis://, rediss:// or unix:// (Conveyor talks to Redis, not HTTP)"
                if scheme in ("http", "https")
                else f"invalid Redis URL {shown}: scheme {scheme!r} is not one of "
                "redis://, rediss:// or unix://"
            )
        fields: dict[str, object] = {"scheme": scheme}
        if parts.username:
            fields["username"] = unquote(parts.username)
        if parts.password:
            fields["password"] = SecretStr(unquote(parts.password))
        if scheme == "unix":
            fields["path"] = unquote(parts.path)
        else:
            if parts.hostname:
                fields["host"] = parts.hostname
            if port is not None:
                fields["port"] = port
            db = parts.path.lstrip("/")
            if db:
                fields["db"] = db
        seen: set[str] = set()
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key not in _QUERY_OPTIONS:
                known = ", ".join(sorted(_QUERY_OPTIONS))
                raise InvalidRedisURL(
                    f"invalid Redis URL {shown}: unknown option {key!r}; known: {known}"
                )
            if key in seen:
                raise InvalidRedisURL(f"invalid Redis URL {shown}: option {key!r} is given twice")
            seen.add(key)
            fields[key] = value
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            # Only locations and messages: an input value could be secret.
            problems = "; ".join(
                ".".join(map(str, err["loc"])) + ": " + err["msg"].removeprefix("Value error, ")
                if err["loc"]
                else err["msg"].removeprefix("Value error, ")
                for err in exc.errors()
            )
            raise InvalidRedisURL(f"invalid Redis URL {shown}: {problems}") from None

    def _url(self, password: str) -> str:
        userinfo = quote(self.username or "", safe="")
        if self.password is not None:
            userinfo += f":{password}"
        if userinfo:
            userinfo += "@"
        query: dict[str, str] = {}
        for name in sorted(self.model_fields_set):
            if name in _QUERY_OPTIONS and name != "db":
                value = getattr(self, name)
                query[name] = str(value).lower() if isinstance(value, bool) else str(value)
        if self.scheme == "unix":
            query = {"db": str(self.db), **query}
            location = quote(self.path or "", safe="/")
        else:
            host = f"[{self.host}]" if ":" in self.host else self.host
            location = f"{host}:{self.port}/{self.db}"
        tail = f"?{urlencode(query, safe='/')}" if query else ""
        return f"{self.scheme}://{userinfo}{location}{tail}"

    @property
    def redacted_url(self) -> str:
        """The URL with the password as ``***``: what every log line and error shows."""
        return self._url("***")

    def to_url(self) -> str:
        """The URL *with* the password, for handing to a child process. Never log it."""
        secret = "" if self.password is None else self.password.get_secret_value()
        return self._url(quote(secret, safe=""))
