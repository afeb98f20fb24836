"""The embedded MongoDB stand-in: a wire-protocol server over mongomock-ng.

Any pymongo client can connect to it with a ``mongodb://`` URI; it answers as
a single-node replica set (``rs0``) with change streams.  It is a
development tool: data lives in memory only and is gone when it stops.

    >>> with walkit.sandbox.start() as uri:          # a thread in this process
    ...     pymongo.MongoClient(uri).db.c.insert_one({"x": 1})

``start(subprocess=True)`` runs it as a separate process instead (what fault
tests ``kill -9``), and ``Sandbox(clock=SimulatedClock())`` lets a simulation
drive its clusterTime and wallTime.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess as _subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import TracebackType

from ..clock import Clock
from ..errors import SandboxError
from .engine import SANDBOX_NOTICE, Engine
from .server import SandboxTCPServer

__all__ = ["Sandbox", "SandboxProcess", "start", "SANDBOX_NOTICE", "DEFAULT_OPLOG_SIZE"]

DEFAULT_OPLOG_SIZE = 100_000
HOST = "127.0.0.1"


def uri_for(port: int, set_name: str = "rs0") -> str:
    return f"mongodb://{HOST}:{port}/?replicaSet={set_name}"


class Sandbox:
    """A sandbox server running in a thread of this process."""

    def __init__(self, port: int = 0, *, oplog_size: int = DEFAULT_OPLOG_SIZE, clock: Clock | None = None, standalone: bool = False) -> None:
        # standalone=True answers as a server without a replica set (no change
        # streams), so tests can check how walkit explains that to a user.
        self.engine = Engine(clock=clock, oplog_size=oplog_size, set_name=None if standalone else "rs0")
        try:
            self._server = SandboxTCPServer((HOST, port), self.engine)
        except OSError as exc:
            raise SandboxError(f"cannot listen on {HOST}:{port}: {exc.strerror}; pick another --port") from None
        self.port: int = self._server.server_address[1]
        self.engine.host = f"{HOST}:{self.port}"
        self.uri = uri_for(self.port, self.engine.set_name) if not standalone else f"mongodb://{HOST}:{self.port}/?directConnection=true"
        self._thread: threading.Thread | None = None

    def start(self) -> Sandbox:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"walkit-sandbox-{self.port}", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self._server.close_connections()
        self._server.shutdown() if self._thread else None
        self._server.server_close()
        if self._thread:
            self._thread.join(5)

    def __enter__(self) -> Sandbox:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SandboxProcess:
    """A sandbox server in a child process (``walkit sandbox``)."""

    def __init__(self, port: int = 0, *, oplog_size: int = DEFAULT_OPLOG_SIZE, startup_timeout: float = 30.0) -> None:
        cmd = [sys.executable, "-m", "walkit", "sandbox", "--port", str(port), "--oplog-size", str(oplog_size), "--quiet"]
        self.proc = _subprocess.Popen(cmd, stdout=_subprocess.PIPE, stderr=_subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + startup_timeout
        line = ""
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("mongodb://") or not line:
                break
        if not line.startswith("mongodb://"):
            self.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise SandboxError(f"the sandbox process did not start: {err.strip() or 'no output'}")
        self.uri = line.strip()
        self.port = int(self.uri.split(":")[2].split("/")[0])
        self.pid = self.proc.pid

    def kill(self) -> None:
        """``kill -9`` the server (what a crash looks like)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except _subprocess.TimeoutExpired:
                self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()

    def __enter__(self) -> SandboxProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def start(port: int = 0, *, oplog_size: int = DEFAULT_OPLOG_SIZE, clock: Clock | None = None, subprocess: bool = False) -> Iterator[str]:
    """Run a sandbox for the ``with`` block and yield its ``mongodb://`` URI."""
    if subprocess:
        if clock is not None:
            raise SandboxError("an injected clock works only in-process; drop subprocess=True")
        with SandboxProcess(port, oplog_size=oplog_size) as proc:
            yield proc.uri
        return
    with Sandbox(port, oplog_size=oplog_size, clock=clock) as box:
        yield box.uri
