"""Set-up of the HTTP API tests: real parts in a temporary home, served on loopback.

:func:`make_api` builds an :class:`ApiContext` over a fresh home, its quota ledger and a
:class:`MockExternalBackupProvider` in a temporary folder (no latency, no random failures),
whose snapshot action scans one database of the session's MongoDB (``mongo_uri``) and whose
trigger is :func:`walkit.offsite.upload.upload`.  It serves it with :class:`ApiServer` on port 0 and
returns an :class:`Api` with an httpx client.  ``calls`` counts how often the actions ran.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pymongo
import pytest

from tests.helpers import unique
from walkit.home import Home
from walkit.offsite.quota import QuotaLedger
from walkit.offsite.upload import UploadResult, quota_dir, upload
from walkit.providers.mock import MockExternalBackupProvider
from walkit.restore.snapshot import SnapshotInfo, take_snapshot
from walkit.service.api import ApiContext, ApiServer

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOCS = 25


@pytest.fixture(scope="session")
def shop(mongo_uri: str) -> Iterator[str]:
    """A database of the session's server holding DOCS documents (dropped afterwards)."""
    name = unique("api")
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000)
    client[name].orders.insert_many([{"_id": i, "total": i * 1.5} for i in range(DOCS)])
    yield name
    client.drop_database(name)
    client.close()


@dataclass
class Api:
    ctx: ApiContext
    mock: MockExternalBackupProvider
    server: ApiServer
    http: httpx.Client
    calls: dict[str, int] = field(default_factory=lambda: {"snapshot": 0, "trigger": 0})

    @property
    def home(self) -> Home:
        return self.ctx.home

    @property
    def ledger(self) -> QuotaLedger:
        return self.ctx.ledger

    def post(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.http.post(path, headers=AUTH if headers is None else headers)


def build_context(tmp: Path, uri: str | None, database: str, **overrides: Any) -> tuple[ApiContext, MockExternalBackupProvider, dict[str, int]]:
    """The context of a worker over ``tmp/home`` (see the module docstring)."""
    mock_options: dict[str, Any] = {"latency_ms": 0, "failure_rate": 0.0, "storage_limit_bytes": None, "seed": 1}
    mock_options.update(overrides.pop("mock_options", {}))
    mock = MockExternalBackupProvider(state_dir=tmp / "service", **mock_options)
    home = Home(tmp / "home").create()
    ledger = QuotaLedger(quota_dir(home))
    calls = {"snapshot": 0, "trigger": 0}

    def snapshot() -> SnapshotInfo:
        calls["snapshot"] += 1
        assert uri is not None
        return take_snapshot(uri, home, database=database, progress=False)

    def trigger() -> UploadResult:
        calls["trigger"] += 1
        return upload(home, mock, ledger, progress=False)

    options: dict[str, Any] = {"token": TOKEN, "snapshot": snapshot if uri else None, "trigger": trigger, "provider": lambda: mock}
    options.update(overrides)
    return ApiContext(home=home, ledger=ledger, **options), mock, calls


@pytest.fixture
def make_api(tmp_path: Path, mongo_uri: str, shop: str) -> Iterator[Callable[..., Api]]:
    """``make_api(**ApiContext fields, mock_options={...}, uri=...)``: a served API (stopped afterwards)."""
    made: list[Api] = []

    def make(uri: str | None = mongo_uri, **overrides: Any) -> Api:
        ctx, mock, calls = build_context(tmp_path / f"w{len(made)}", uri, shop, **overrides)
        server = ApiServer(ctx, port=0).start()
        api = Api(ctx, mock, server, httpx.Client(base_url=server.url, timeout=30), calls)
        made.append(api)
        return api

    yield make
    for api in made:
        api.http.close()
        api.server.stop()


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()
