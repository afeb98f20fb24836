"""``walkit run`` and ``walkit serve`` as an operator runs them: JSON logs, the API beside the
worker, a clean SIGTERM, clear refusals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pymongo
import pytest

from tests.helpers import one_error_line, walkit
from tests.service.conftest import wait_for


@pytest.fixture
def env(tmp_path: Path, mongo_uri: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("WALKIT_", "BACKUP_", "MONGODB_"))}
    out.update(HOME=str(tmp_path), MONGODB_URI=mongo_uri, WALKIT_HOME=str(tmp_path / "home"), BACKUP_DIR=str(tmp_path / "offsite"),
               WALKIT_MOCK_LATENCY_MS="0", WALKIT_MOCK_FAILURE_RATE="0", WALKIT_API_TOKEN="tok-" + "x" * 20)
    return out


class Proc:
    """A walkit command in the background; its stderr lines collected."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "walkit", *argv], env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"), stdin=subprocess.DEVNULL)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def url(self) -> str:
        match = wait_for(lambda: re.search(r"HTTP API on (http://[\d.]+:\d+)", self.log.read_text()), what="the API to listen")
        return match.group(1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def test_run_with_http_serves_the_api_logs_json_and_stops_cleanly_on_sigterm(env: dict[str, str], tmp_path: Path, procs: list[Proc], mongo_uri: str) -> None:
    worker = Proc(["run", "--http", "--port", "0"], {**env, "WALKIT_LOG_LEVEL": "debug"}, tmp_path / "run.log")
    procs.append(worker)
    url = worker.url()
    token = env["WALKIT_API_TOKEN"]
    coll = pymongo.MongoClient(mongo_uri).cli_run.orders
    coll.insert_many([{"k": i, "card": f"4111-1111-{i:04d}-doc-content"} for i in range(50)])
    wait_for(lambda: httpx.get(f"{url}/backup/status").json()["worker"]["events_captured"] >= 50, what="capture")
    status = httpx.get(f"{url}/backup/status").json()
    assert status["worker"]["running"] and status["worker"]["healthy"] and status["api"]["post_enabled"]
    assert httpx.post(f"{url}/backup/trigger").status_code == 401
    assert httpx.post(f"{url}/backup/trigger", headers={"Authorization": "Bearer wrong"}).status_code == 403
    first = httpx.post(f"{url}/backup/trigger", headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert first.status_code == 200 and first.json()["ref"], first.text
    second = httpx.post(f"{url}/backup/trigger", headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert second.status_code == 429 and int(second.headers["retry-after"]) > 80_000
    assert worker.stop() == 0
    records = [json.loads(line) for line in worker.lines() if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    messages = " ".join(r["msg"] for r in records)
    assert "worker stopped" in messages and token not in worker.log.read_text()
    assert "doc-content" not in worker.log.read_text(), "document contents never reach the logs (even at debug)"
    assert walkit("verify", "--home", env["WALKIT_HOME"]).returncode == 0
    calls = [json.loads(line) for line in (Path(env["WALKIT_HOME"]) / "quota" / "ledger.jsonl").read_text().splitlines()]
    assert sum(1 for c in calls if c["kind"] == "intent") == 1, "the 429 sent nothing"


def test_serve_shows_a_worker_running_in_another_process(env: dict[str, str], tmp_path: Path, procs: list[Proc]) -> None:
    worker = Proc(["run"], env, tmp_path / "run.log")
    procs.append(worker)
    wait_for(lambda: (Path(env["WALKIT_HOME"]) / "worker.json").exists(), what="worker.json")
    api = Proc(["serve", "--port", "0"], {**env, "WALKIT_API_TOKEN": ""}, tmp_path / "serve.log")
    procs.append(api)
    url = api.url()
    assert url.startswith("http://127.0.0.1:")
    wait_for(lambda: httpx.get(f"{url}/backup/status").json()["worker"].get("running"), what="the worker seen running")
    assert httpx.get(f"{url}/healthz").status_code == 200
    shown = walkit("status", "--home", env["WALKIT_HOME"])
    assert shown.returncode == 0 and "worker       running, healthy" in shown.stdout, shown.stdout + shown.stderr
    assert httpx.post(f"{url}/backup/snapshot").status_code == 403, "no token configured: POSTs are disabled"
    assert worker.stop() == 0
    wait_for(lambda: not httpx.get(f"{url}/backup/status").json()["worker"].get("running"), what="the stopped worker seen")
    assert httpx.get(f"{url}/healthz").status_code == 503
    assert api.stop() == 0


def test_run_refuses_without_a_uri_and_does_nothing_when_disabled(env: dict[str, str]) -> None:
    no_uri = {k: v for k, v in env.items() if k != "MONGODB_URI"}
    result = subprocess.run([sys.executable, "-m", "walkit", "run"], env=no_uri, capture_output=True, text=True, timeout=60)
    assert "MONGODB_URI" in one_error_line(result, 2)
    result = subprocess.run([sys.executable, "-m", "walkit", "run"], env={**env, "BACKUP_HOUR": "25"}, capture_output=True, text=True, timeout=60)
    assert "BACKUP_HOUR='25'" in one_error_line(result, 2)
    result = subprocess.run([sys.executable, "-m", "walkit", "run"], env={**env, "BACKUP_ENABLED": "false"}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "BACKUP_ENABLED is false" in result.stderr
    assert not Path(env["WALKIT_HOME"]).exists(), "a disabled worker touches nothing"
