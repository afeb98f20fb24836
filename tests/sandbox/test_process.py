"""The sandbox as a child process: start, refuse a busy port, crash, stop.

``SandboxProcess`` runs ``python -m walkit sandbox``.  A crash (``kill -9``)
loses everything, so a change stream that resumes on the restarted server
must fail with 286 ChangeStreamHistoryLost and never carry on as if nothing
happened; SIGTERM and SIGINT stop it cleanly with exit status 0.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from pymongo.errors import OperationFailure

from walkit.clock import SimulatedClock
from walkit.errors import SandboxError
from walkit.sandbox import Sandbox, SandboxProcess

URI = re.compile(r"^mongodb://127\.0\.0\.1:(\d+)/\?replicaSet=rs0$")


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other program is listening on."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        yield blocker.getsockname()[1]


def _client(uri: str, **kw: Any) -> pymongo.MongoClient:
    options: dict[str, Any] = {"serverSelectionTimeoutMS": 10_000, "connectTimeoutMS": 5000, **kw}
    return pymongo.MongoClient(uri, **options)


def test_sandbox_process_prints_its_uri_and_serves() -> None:
    with SandboxProcess() as proc:
        match = URI.match(proc.uri)
        assert match, proc.uri
        assert int(match.group(1)) == proc.port > 0
        assert proc.pid != os.getpid() and proc.returncode is None
        with _client(proc.uri) as client:
            hello = client.admin.command("hello")
            assert hello["setName"] == "rs0" and hello["isWritablePrimary"] is True
            client.p.c.insert_one({"_id": 1})
            assert client.p.c.find_one() == {"_id": 1}
    assert proc.returncode == 0


def test_walkit_sandbox_on_a_busy_port_fails_in_one_line(busy_port: int) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "walkit", "sandbox", "--port", str(busy_port)],
        capture_output=True, text=True, timeout=30,
    )
    assert run.returncode != 0
    assert run.stdout == "", "no URI may be printed for a server that is not listening"
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("walkit: error:")
    assert f"127.0.0.1:{busy_port}" in lines[0]


def test_sandbox_process_on_a_busy_port_raises_with_the_reason(busy_port: int) -> None:
    began = time.monotonic()
    with pytest.raises(SandboxError) as info:
        SandboxProcess(port=busy_port, startup_timeout=20)
    assert time.monotonic() - began < 15, "a child that died at once must not be waited for"
    assert f"cannot listen on 127.0.0.1:{busy_port}" in str(info.value)
    assert "Traceback" not in str(info.value)


def _wait_for_a_new_second(after: float) -> None:
    """Sleep until the wall clock is in a later second than ``after`` (at most ~1 s)."""
    while int(time.time()) <= int(after):
        time.sleep(0.02)


def test_a_stream_open_across_kill_9_and_restart_gets_286() -> None:
    first = SandboxProcess()
    port = first.port
    client = _client(first.uri)
    second: SandboxProcess | None = None
    try:
        stream = client.crash.c.watch(max_await_time_ms=3000)
        client.crash.c.insert_many([{"_id": i} for i in range(3)])
        seen = [stream.try_next() for _ in range(3)]
        assert [e["documentKey"]["_id"] for e in seen if e] == [0, 1, 2]
        old_token = stream.resume_token
        old_time = seen[-1]["clusterTime"]

        outcome: dict[str, Any] = {}

        def wait_for_more() -> None:  # a getMore is waiting in the server when it dies
            try:
                outcome["event"] = stream.try_next()
            except BaseException as exc:
                outcome["error"] = exc

        waiter = threading.Thread(target=wait_for_more, daemon=True)
        waiter.start()
        time.sleep(0.3)
        killed_at = time.time()
        first.kill()
        assert first.returncode == -signal.SIGKILL
        # See test_a_token_from_an_earlier_server_in_the_same_second_is_history_lost
        # for a restart within the same second.
        _wait_for_a_new_second(killed_at)
        second = SandboxProcess(port=port)
        assert second.uri == first.uri
        # pymongo resumes on its own (resumeAfter = its cached token) and must be refused.
        waiter.join(20)
        assert not waiter.is_alive(), "the change stream hung after the crash"
        error = outcome.get("error")
        assert isinstance(error, OperationFailure), outcome
        assert error.code == 286

        with _client(second.uri) as fresh:
            fresh.crash.c.insert_one({"_id": "after"})
            for option in ({"resume_after": old_token}, {"start_after": old_token}, {"start_at_operation_time": old_time}):
                with pytest.raises(OperationFailure) as info:
                    with fresh.crash.c.watch(**option) as reopened:
                        reopened.try_next()
                assert info.value.code == 286, option
            # History on the new server starts afresh, and a new stream works.
            assert fresh.crash.c.find_one() == {"_id": "after"}
            with fresh.crash.c.watch(max_await_time_ms=500) as new_stream:
                fresh.crash.c.insert_one({"_id": "later"})
                event = next((e for e in (new_stream.try_next() for _ in range(10)) if e), None)
                assert event is not None and event["documentKey"] == {"_id": "later"}
    finally:
        client.close()
        first.stop()
        if second is not None:
            assert second.stop() == 0


def test_a_token_from_an_earlier_server_in_the_same_second_is_history_lost() -> None:
    clock = SimulatedClock()  # frozen: both servers live in the same second, deterministically
    with Sandbox(clock=clock) as first, _client(first.uri) as client:
        port = first.port
        with client.same.c.watch(max_await_time_ms=200) as stream:
            client.same.c.insert_many([{"_id": i} for i in range(3)])
            assert [stream.try_next()["documentKey"]["_id"] for _ in range(3)] == [0, 1, 2]
            token = stream.resume_token
    with Sandbox(port, clock=clock) as second, _client(second.uri) as client:
        client.same.c.insert_one({"_id": "new"})
        with pytest.raises(OperationFailure) as info:
            with client.same.c.watch(resume_after=token, max_await_time_ms=200) as stream:
                stream.try_next()
        assert info.value.code == 286


def _stop_with(sig: signal.Signals) -> tuple[int | None, str]:
    proc = SandboxProcess()
    client = _client(proc.uri, serverSelectionTimeoutMS=500)
    ended = threading.Event()

    def watch() -> None:
        try:
            with client.term.c.watch(max_await_time_ms=20_000) as stream:
                stream.try_next()
        except pymongo.errors.PyMongoError:
            ended.set()

    try:
        client.term.c.insert_one({"_id": 1})
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        time.sleep(0.3)  # an awaiting getMore is open in the child
        os.kill(proc.pid, sig)
        proc.proc.wait(10)
        watcher.join(10)
        assert ended.is_set(), "the open change stream did not notice the server stopping"
        code = proc.stop()
        return code, proc.stderr_tail()
    finally:
        client.close()
        proc.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_process_cleanly(sig: signal.Signals) -> None:
    code, stderr = _stop_with(sig)
    assert code == 0, stderr
    assert "Traceback" not in stderr


def test_stop_returns_zero_and_frees_the_port() -> None:
    proc = SandboxProcess()
    assert proc.stop() == 0
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", proc.port))  # nobody listens there any more


def test_a_chatty_child_never_blocks_on_its_stderr_pipe() -> None:
    # Each bad connection makes the child log a warning line to stderr; far
    # more than a pipe holds (64 KiB) must not stall it.
    with SandboxProcess() as proc:
        for n in range(900):
            with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as s:
                s.settimeout(5)
                s.sendall(struct.pack("<iiii", 5, n, 0, 2013))
                try:
                    closed = s.recv(16) == b""
                except ConnectionResetError:
                    closed = True
                except TimeoutError:
                    pytest.fail(f"connection {n} was never closed: the child is stuck")
                assert closed
        with _client(proc.uri) as client:
            assert client.admin.command("ping")["ok"] == 1.0
        assert "closing connection" in proc.stderr_tail()
        assert len(proc.stderr_tail().splitlines()) <= SandboxProcess.STDERR_LINES
