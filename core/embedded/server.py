"""The server process: :class:`RedisServer` starts, stops, restarts and cleans up one
private ``redis-server``. See :mod:`conveyor.embedded` for what it promises."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

from conveyor.embedded.binary import find_redis_binary
from conveyor.embedded.probe import LOOPBACK, answers_ping, free_port, holds_listener
from conveyor.embedded.spawn import spawn
from conveyor.embedded.tls import TLSFiles
from conveyor.errors import RedisBinaryNotFound, RedisServerError, RedisStartError

__all__ = ("RedisServer",)

_log = logging.getLogger(__name__)

_LOG_NAME = "server.log"
_CONF_NAME = "secrets.conf"
_SOCKET_NAME = "redis.sock"
_PORT_ATTEMPTS = 3  # a free port can be taken between our probe and the server's bind


class _State:
    """What the finalizer needs; kept apart from RedisServer so the finalizer holds no cycle."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None


def _finalize(state: _State) -> None:
    """Kill a server nobody closed and remove its directory (on GC or at interpreter exit)."""
    proc, state.proc = state.proc, None
    shutil.rmtree(state.dir, ignore_errors=True)  # first: a warning may be raised as an error
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)
        warnings.warn(
            f"RedisServer pid {proc.pid} was never closed; killed it",
            ResourceWarning,
            stacklevel=1,
        )


def _conf_quote(value: str) -> str:
    """A value as a double-quoted redis.conf string."""
    if any(c in value for c in "\r\n\0"):
        raise ValueError("a Redis config value cannot contain a newline or NUL")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RedisServer:
    """A private ``redis-server`` (or ``valkey-server``) child process on loopback.

    Args:
        binary: the server executable; default :func:`find_redis_binary`.
        port: TCP port (the TLS port if ``tls`` is given); default a free one, kept across
            restarts.
        password: sets ``requirepass`` (written to a 0600 file, not the command line);
            :attr:`url` then carries it.
        tls: serve TLS only (``--port 0 --tls-port <port>``, clients need no certificate);
            :attr:`url` is then ``rediss://`` with the CA file in its query.
        unix_socket: also listen on ``<dir>/redis.sock``, see :attr:`unix_url`.
        args: extra command-line arguments, after ours so they win, e.g.
            ``["--appendonly", "yes"]`` or ``["--aclfile", "/path/users.acl"]``.
        startup_timeout: seconds :meth:`start` waits for the server to answer PING.

    Persistence is off by default (``--save "" --appendonly no``). The directory is created
    here and removed by :meth:`close` (and ``__exit__``), not by :meth:`stop` or :meth:`kill`,
    so a stopped or killed server restarts on its data.
    """

    def __init__(
        self,
        *,
        binary: str | os.PathLike[str] | None = None,
        port: int | None = None,
        password: str | None = None,
        tls: TLSFiles | None = None,
        unix_socket: bool = False,
        args: Sequence[str] = (),
        startup_timeout: float = 10.0,
    ) -> None:
        if binary is None:
            self._binary = find_redis_binary()
        else:
            found = shutil.which(os.fspath(binary))  # a bare name is looked up on PATH
            if found is None:
                raise RedisBinaryNotFound([f"{os.fspath(binary)!r} (not an executable file)"])
            self._binary = Path(found)
        self._port = port
        self._password = password
        self._tls = tls
        self._unix_socket = unix_socket
        self._args = tuple(args)
        self._startup_timeout = startup_timeout
        self._closed = False
        secrets = "" if password is None else f"requirepass {_conf_quote(password)}\n"
        self._state = _State(Path(tempfile.mkdtemp(prefix="conveyor-redis-")))
        self._finalizer = weakref.finalize(self, _finalize, self._state)
        if secrets:
            conf = self._state.dir / _CONF_NAME
            conf.touch(mode=0o600)  # in a 0700 directory, but the file is private too
            conf.write_text(secrets, encoding="utf-8")

    # -- properties --

    @property
    def binary(self) -> Path:
        return self._binary

    @property
    def dir(self) -> Path:
        """The server's private working directory (data files, log, socket)."""
        return self._state.dir

    @property
    def log_path(self) -> Path:
        return self._state.dir / _LOG_NAME

    @property
    def port(self) -> int:
        """The TCP port (the TLS port for a TLS server). Raises if never started."""
        if self._port is None:
            raise RedisServerError("the server has not been started yet, so it has no port")
        return self._port

    @property
    def pid(self) -> int:
        """Process id of the running server. Raises if it is not running."""
        proc = self._state.proc
        if proc is None or proc.poll() is not None:
            raise RedisServerError("the server is not running")
        return proc.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive (it may still be loading)."""
        proc = self._state.proc
        return proc is not None and proc.poll() is None

    @property
    def unix_socket_path(self) -> Path | None:
        return self._state.dir / _SOCKET_NAME if self._unix_socket else None

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:<port>/0``, or ``rediss://...?ssl_ca_certs=<ca>``.

        It carries the password: log :func:`conveyor.broker.settings.redact_url` of it.
        """
        auth = "" if self._password is None else f":{quote(self._password, safe='')}@"
        if self._tls is None:
            return f"redis://{auth}{LOOPBACK}:{self.port}/0"
        ca = quote(str(self._tls.ca_file), safe="/")
        return f"rediss://{auth}{LOOPBACK}:{self.port}/0?ssl_ca_certs={ca}"

    @property
    def unix_url(self) -> str:
        """``unix://[:password@]<dir>/redis.sock?db=0``; needs ``unix_socket=True``."""
        path = self.unix_socket_path
        if path is None:
            raise RedisServerError("this server has no unix socket; pass unix_socket=True")
        auth = "" if self._password is None else f":{quote(self._password, safe='')}@"
        return f"unix://{auth}{quote(str(path), safe='/')}?db=0"

    # -- lifetime --

    def __enter__(self) -> Self:
        if not self.running:
            try:
                self.start()
            except BaseException:
                self.close()  # __exit__ will not run: remove the directory now
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the server and wait until it answers PING (at most ``startup_timeout`` s).

        Raises:
            RedisStartError: the process exited or did not answer in time; it is killed, and
                the error holds the end of its log.
            RedisServerError: already running, or closed.
        """
        if self._closed:
            raise RedisServerError("this RedisServer is closed; create a new one")
        if self.running:
            raise RedisServerError(f"the server is already running (pid {self.pid})")
        # A port given to us, or kept from an earlier start, is fixed; only one we pick now
        # may be swapped for another when somebody takes it first.
        fixed = self._port
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = fixed if fixed is not None else free_port()
            try:
                self._start_on(port)
            except RedisStartError as exc:
                taken = "already in use" in exc.log_tail
                if fixed is not None or not taken or attempt == _PORT_ATTEMPTS:
                    raise
                _log.info("redis_server.port_taken port=%d attempt=%d", port, attempt)
                continue
            self._port = port
            return

    def _argv(self, port: int) -> list[str]:
        argv = [str(self._binary)]
        if self._password is not None:
            argv.append(str(self._state.dir / _CONF_NAME))
        argv += ["--bind", LOOPBACK, "--dir", str(self._state.dir), "--daemonize", "no"]
        argv += ["--save", "", "--appendonly", "no", "--logfile", ""]
        if self._tls is None:
            argv += ["--port", str(port)]
        else:
            argv += ["--port", "0", "--tls-port", str(port)]
            argv += ["--tls-cert-file", str(self._tls.cert_file)]
            argv += ["--tls-key-file", str(self._tls.key_file)]
            argv += ["--tls-ca-cert-file", str(self._tls.ca_file)]
            argv += ["--tls-auth-clients", "no"]
        if self._unix_socket:
            argv += ["--unixsocket", str(self._state.dir / _SOCKET_NAME)]
            argv += ["--unixsocketperm", "700"]
        return argv + list(self._args)

    def _start_on(self, port: int) -> None:
        argv = self._argv(port)
        with open(self.log_path, "ab") as log:
            offset = log.tell()
            proc = spawn(argv, cwd=self._state.dir, log=log)
        self._state.proc = proc
        _log.debug("redis_server.starting binary=%s port=%d pid=%d", self._binary, port, proc.pid)
        deadline = time.monotonic() + self._startup_timeout
        pause = 0.005
        while True:
            code = proc.poll()
            if code is not None:
                self._state.proc = None
                reason = f"it exited with code {code}"
                raise RedisStartError(self._binary, port, reason, self._log_tail(offset))
            # The answer must come from our process: another server may hold the port, and
            # then ours fails to bind it and exits (retried on another port, if ours to pick).
            if answers_ping(port, self._tls) and holds_listener(proc.pid, port) is not False:
                break
            if time.monotonic() > deadline:
                self._reap(proc, kill=True)
                reason = f"no answer to PING within {self._startup_timeout:.1f}s"
                raise RedisStartError(self._binary, port, reason, self._log_tail(offset))
            time.sleep(pause)  # polling PING while the server starts: there is no event to await
            pause = min(pause * 2, 0.1)
        _log.info(
            "redis_server.started binary=%s port=%d pid=%d dir=%s",
            self._binary,
            port,
            proc.pid,
            self._state.dir,
        )

    def _log_tail(self, offset: int = 0, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(offset, log.seek(0, os.SEEK_END) - 8192))
                text = log.read().decode(errors="replace")
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc})"
        return "\n".join(text.splitlines()[-lines:]) or "(empty)"

    def _reap(self, proc: subprocess.Popen[bytes], *, kill: bool, timeout: float = 10.0) -> None:
        """Signal ``proc`` (SIGKILL, or SIGTERM then SIGKILL after ``timeout``) and reap it."""
        try:
            if proc.poll() is None:
                if kill:
                    proc.kill()
                else:
                    proc.terminate()
                    try:
                        proc.wait(timeout=timeout)
                    except subprocess.TimeoutExpired:
                        _log.warning(
                            "redis_server.stop_timeout pid=%d timeout=%.1f action=SIGKILL",
                            proc.pid,
                            timeout,
                        )
                        proc.kill()
            proc.wait(timeout=5)  # after SIGKILL only a wedged kernel takes this long
        finally:
            if self._state.proc is proc:
                self._state.proc = None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server with SIGTERM and wait up to ``timeout`` s, then SIGKILL it.

        Keeps the directory (and so the data); does nothing if the server is not running.
        """
        proc = self._state.proc
        if proc is not None:
            self._reap(proc, kill=False, timeout=timeout)
            _log.info("redis_server.stopped pid=%d code=%s", proc.pid, proc.returncode)

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would, and reap it. Keeps the directory."""
        proc = self._state.proc
        if proc is not None:
            self._reap(proc, kill=True)
            _log.info("redis_server.killed pid=%d", proc.pid)

    def restart(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop (or kill) the server if it runs, then start it on the same port and directory."""
        if kill:
            self.kill()
        else:
            self.stop(timeout)
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory. Idempotent."""
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            self._finalizer()  # removes the directory (the process is already gone)

    def __repr__(self) -> str:
        state = f"pid={self._state.proc.pid}" if self.running and self._state.proc else "stopped"
        return f"<RedisServer {self._binary.name} port={self._port} {state} dir={self.dir}>"
