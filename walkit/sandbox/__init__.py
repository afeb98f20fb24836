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
import queue
import signal
import socket
import struct
import subprocess as _subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from types import TracebackType

import bson

from walkit.clock import Clock
from walkit.errors import SandboxError
from walkit.sandbox.engine import SANDBOX_NOTICE, Engine
from walkit.sandbox.server import SandboxTCPServer
from walkit.sandbox.wire import OP_MSG, BadMessageError, ProtocolError, read_request

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
        self.uri = uri_for(self.port, self.engine.set_name or "rs0") if not standalone else f"mongodb://{HOST}:{self.port}/?directConnection=true"
        self._thread: threading.Thread | None = None

    def start(self) -> Sandbox:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"walkit-sandbox-{self.port}", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def serve_until_interrupted(self) -> None:
        """Serve in this thread until KeyboardInterrupt (a signal handler raises it), then stop."""
        try:
            self.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

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
    """A sandbox server in a child process (``walkit sandbox``).

    The child's stdout and stderr are drained by two daemon threads for as
    long as it runs, so however much it logs it never blocks on a full pipe;
    the last :data:`STDERR_LINES` lines of stderr are kept for
    :meth:`stderr_tail`.  The constructor waits at most ``startup_timeout``
    seconds for the URI line and for the child to answer a ``ping`` (so it is
    serving, and SIGTERM stops it cleanly, when the constructor returns); it
    raises :class:`SandboxError` (with what the child said on stderr) if
    either does not come.
    """

    STDERR_LINES = 200

    def __init__(self, port: int = 0, *, oplog_size: int = DEFAULT_OPLOG_SIZE, startup_timeout: float = 30.0) -> None:
        self.proc = _subprocess.Popen(
            self._command(port, oplog_size), stdin=self._stdin, stdout=_subprocess.PIPE, stderr=_subprocess.PIPE, text=True, start_new_session=True
        )
        self.pid = self.proc.pid
        self._stderr: deque[str] = deque(maxlen=self.STDERR_LINES)
        self._first_lines: queue.Queue[str] = queue.Queue()
        self._drains = [
            threading.Thread(target=self._drain_stdout, name=f"walkit-sandbox-stdout-{self.pid}", daemon=True),
            threading.Thread(target=self._drain_stderr, name=f"walkit-sandbox-stderr-{self.pid}", daemon=True),
        ]
        for thread in self._drains:
            thread.start()
        deadline = time.monotonic() + startup_timeout
        line = ""
        while True:
            try:
                line = self._first_lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
                break
            if line.startswith("mongodb://") or not line:
                break
        if not line.startswith("mongodb://"):
            self.kill()
            self._join_drains()
            err = self.stderr_tail().strip() or ("no output" if self.proc.returncode is not None else "")
            raise SandboxError(f"the sandbox process did not start: {err or f'no URI within {startup_timeout:g} s'}")
        self.uri = line.strip()
        self.port = int(self.uri.split(":")[2].split("/")[0])
        try:
            self._ping(deadline)
        except (OSError, EOFError, ProtocolError, BadMessageError) as exc:
            self.kill()
            self._join_drains()
            raise SandboxError(f"the sandbox process printed {self.uri} but does not answer: {exc}; {self.stderr_tail().strip()}".rstrip("; ")) from None

    #: The child's stdin (None: this process's own).
    _stdin: int | None = None

    def _command(self, port: int, oplog_size: int) -> list[str]:
        """The child's command line."""
        return [sys.executable, "-m", "walkit", "sandbox", "--port", str(port), "--oplog-size", str(oplog_size), "--quiet"]

    def _ping(self, deadline: float) -> None:
        """Wait until the child answers a ``ping`` (it is then serving, signal handlers and all)."""
        body = bson.encode({"ping": 1, "$db": "admin"})
        payload = struct.pack("<I", 0) + b"\x00" + body
        with socket.create_connection((HOST, self.port), timeout=max(0.1, deadline - time.monotonic())) as sock:
            sock.sendall(struct.pack("<iiii", 16 + len(payload), 1, 0, OP_MSG) + payload)
            reply = read_request(sock)  # an OP_MSG reply has a request's shape
        if reply.body.get("ok") != 1.0:
            raise OSError(f"ping answered {reply.body!r}")

    def _drain_stdout(self) -> None:
        assert self.proc.stdout is not None
        announced = False
        try:
            for line in self.proc.stdout:
                if not announced:
                    self._first_lines.put(line)
                    announced = line.startswith("mongodb://")
        except (OSError, ValueError):  # the pipe was closed under us
            pass
        finally:
            self._first_lines.put("")  # end of output

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        try:
            for line in self.proc.stderr:
                self._stderr.append(line)
        except (OSError, ValueError):
            pass

    def _join_drains(self, timeout: float = 5.0) -> None:
        for thread in self._drains:
            thread.join(timeout)

    def stderr_tail(self) -> str:
        """The last lines the child wrote to stderr (complete once it has exited)."""
        return "".join(self._stderr)

    @property
    def returncode(self) -> int | None:
        """The child's exit status, or None while it runs (-9 after :meth:`kill`)."""
        return self.proc.poll()

    def kill(self) -> None:
        """``kill -9`` the server (what a crash looks like)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        """Stop the server with SIGTERM (SIGKILL after 10 s); return its exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except _subprocess.TimeoutExpired:
                self.kill()
        self._join_drains()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        return self.proc.returncode

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
