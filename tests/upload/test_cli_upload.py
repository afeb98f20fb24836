"""``walkit upload | status | restore --from external | prune`` as a user runs them.

One capture of a single database (a snapshot, then changes) makes a template home;
each test copies it and runs ``python -m walkit`` in a subprocess with the mock service
in a temporary ``--backup-dir`` (no latency, no random failures).

- ``upload`` exits 0 and prints the ref; a second one exits 3 with one error line
  naming when the next call is allowed;
- ``status`` (text and ``--json``) shows the quota, the last upload and its seq range,
  the events waiting after new writes, the local and off-site windows; with
  ``--check-provider`` the off-site part comes from the service;
- ``--provider filesystem --backup-dir D`` and ``BACKUP_USE_FILESYSTEM=true BACKUP_DIR=D``
  put the bundle into D;
- a bad environment value exits 2 with one line naming the variable, sending nothing;
- a service that is down: exit 1, one clean line, the quota not used;
- ``restore --from external --dry-run`` lists the bundles; after the home is deleted,
  ``restore --from external --to-dump`` writes the state of the local home at that instant;
- ``prune --dry-run`` says what it would remove and removes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pymongo
import pytest

from tests.helpers import capturing, in_background, one_error_line, unique
from walkit.home import Home
from walkit.offsite.quota import QuotaLedger
from walkit.offsite.upload import quota_dir
from walkit.providers.filesystem import FileSystemBackupProvider
from walkit.providers.mock import MockExternalBackupProvider
from walkit.restore.local import state_at
from walkit.restore.plan import Target
from walkit.restore.snapshot import take_snapshot
from walkit.wal.capture import ChangeCapture
from walkit.wal.format import read_records

from .conftest import WAIT, dump_state

ROOT = Path(__file__).resolve().parents[2]


def cli(*argv: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m walkit ARGV`` with the mock fast and reliable, and no walkit settings but ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("WALKIT_", "BACKUP_")) and k != "MONGODB_URI"}
    environ |= {"WALKIT_MOCK_LATENCY_MS": "0", "WALKIT_MOCK_FAILURE_RATE": "0"} | env
    return subprocess.run(
        [sys.executable, "-m", "walkit", *map(str, argv)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=environ, cwd=ROOT,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def service(folder: Path) -> MockExternalBackupProvider:
    return MockExternalBackupProvider(state_dir=folder, latency_ms=0, failure_rate=0)


def events_in(home: Path) -> list[tuple[int, datetime]]:
    return [(int(r.seq), r.wt) for r in read_records(home / "wal", kinds=("e",))]  # type: ignore[arg-type]


def tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()}


@dataclass(frozen=True)
class Template:
    uri: str
    db: str
    path: Path
    events: int  # in its WAL, seq 1..events
    mid: datetime  # an instant between its changes, after the snapshot
    last: datetime  # its newest change

    def copy(self, to: Path) -> Path:
        shutil.copytree(self.path, to)
        return to


@pytest.fixture(scope="module")
def template(mongo_uri: str, client: pymongo.MongoClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    name = unique("upcli")
    home = tmp_path_factory.mktemp("upload-cli") / "home"
    orders = client[name].orders
    orders.insert_many([{"_id": i, "item": f"before {i}"} for i in range(3)])
    try:
        with capturing(mongo_uri, home, database=name):
            take_snapshot(mongo_uri, Home(home), database=name, progress=False)
            orders.insert_many([{"_id": 10 + i, "item": f"after {i}"} for i in range(3)])
            time.sleep(0.01)
            orders.update_one({"_id": 1}, {"$set": {"item": "changed"}})
            time.sleep(0.01)
            orders.delete_one({"_id": 2})
            deadline = time.monotonic() + WAIT
            while len(events_in(home)) < 5:
                assert time.monotonic() < deadline, "the changes did not reach the WAL in time"
                time.sleep(0.02)
        events = events_in(home)
        assert [seq for seq, _ in events] == [1, 2, 3, 4, 5]
        yield Template(mongo_uri, name, home, len(events), events[3][1], events[-1][1])
    finally:
        client.drop_database(name)


@pytest.fixture
def home(template: Template, tmp_path: Path) -> Path:
    return template.copy(tmp_path / "home")


def test_upload_prints_the_ref_and_a_second_call_exits_3_naming_the_next_allowed_time(template: Template, home: Path, tmp_path: Path) -> None:
    backup = tmp_path / "valerix"
    out = ok(cli("upload", "--home", home, "--backup-dir", backup))
    (stored,) = service(backup).list()
    assert stored.ref in out and f"seq 1..{template.events}" in out and "uploaded to mock" in out
    assert stored.metadata["first_seq"] == 1 and stored.metadata["last_seq"] == template.events and stored.metadata["snapshot"]

    again = cli("upload", "--home", home, "--backup-dir", backup)
    line = one_error_line(again, 3)
    nxt = QuotaLedger(quota_dir(Home(home))).next_allowed()
    assert nxt is not None and f"next is allowed at {nxt.isoformat()}" in line and "nothing was sent" in line
    assert service(backup).upload_calls == 1


def test_status_shows_quota_last_upload_waiting_events_and_windows(template: Template, home: Path, tmp_path: Path, client: pymongo.MongoClient) -> None:
    backup = tmp_path / "valerix"
    before = json.loads(ok(cli("status", "--json", "--home", home)))
    assert before["quota"]["used"] is False and before["last_upload"] is None and before["waiting"]["events"] == template.events
    assert "quota        available now" in ok(cli("status", "--home", home))
    ok(cli("upload", "--home", home, "--backup-dir", backup))
    (stored,) = service(backup).list()

    # three new changes after the upload, captured into this home
    cap = ChangeCapture(template.uri, Home(home), database=template.db, fsync_interval=0.05, initial_snapshot=False)
    ready = threading.Event()
    cap.on_ready = lambda _cap: ready.set()
    thread, failures = in_background(cap)
    try:
        assert ready.wait(WAIT), failures
        client[template.db].orders.insert_many([{"_id": 100 + i, "item": "new"} for i in range(3)])
        deadline = time.monotonic() + WAIT
        while len(events_in(home)) < template.events + 3:
            assert time.monotonic() < deadline and not failures, failures
            time.sleep(0.02)
    finally:
        cap.stop()
        thread.join(WAIT)
    assert not thread.is_alive() and not failures, failures
    e = template.events
    nxt = QuotaLedger(quota_dir(Home(home))).next_allowed()
    assert nxt is not None

    text = ok(cli("status", "--home", home))
    lines = {line[:12].strip(): line for line in text.splitlines()}
    assert lines["quota"].startswith("quota        used (rolling window)") and f"next call allowed at {nxt.isoformat()}" in lines["quota"]
    assert "bundle 1 at " in lines["last upload"] and f"seq 1..{e}" in lines["last upload"] and stored.ref in lines["last upload"]
    assert f"3 events (seq {e + 1}..{e + 3})" in lines["waiting"]
    assert "restorable" in lines["local"] and "nothing" not in lines["local"]
    assert "(1 bundles, per the quota ledger)" in lines["off-site"] and "nothing yet" not in lines["off-site"]

    report = json.loads(ok(cli("status", "--json", "--home", home)))
    assert report["quota"]["used"] is True and report["quota"]["next_allowed"] == nxt.isoformat()
    assert report["quota"]["last_call"]["ok"] is True and report["quota"]["last_call"]["ref"] == stored.ref
    up = report["last_upload"]
    assert (up["index"], up["first_seq"], up["last_seq"], up["ref"]) == (1, 1, e, stored.ref) and up["snapshot"]
    waiting = report["waiting"]
    assert (waiting["events"], waiting["first_seq"], waiting["last_seq"], waiting["gaps"]) == (3, e + 1, e + 3, 0)
    (local,) = report["local"]
    assert datetime.fromisoformat(local["from"]) <= template.mid and datetime.fromisoformat(local["to"]) > template.last
    offsite = report["offsite"]
    assert offsite["source"] == "the quota ledger" and offsite["bundles"] == 1 and offsite["missing"] is None
    (window,) = offsite["windows"]
    assert datetime.fromisoformat(window["from"]) <= template.mid and datetime.fromisoformat(window["to"]) >= template.last

    checked = json.loads(ok(cli("status", "--json", "--check-provider", "--home", home, "--backup-dir", backup)))
    assert checked["offsite"]["source"] == "mock" and checked["offsite"]["bundles"] == 1
    assert checked["offsite"]["windows"] == offsite["windows"]
    assert "(1 bundles, per mock)" in ok(cli("status", "--check-provider", "--home", home, "--backup-dir", backup))
    assert service(backup).upload_calls == 1  # status never uploads


def test_the_filesystem_provider_by_option_and_by_the_original_environment(template: Template, home: Path, tmp_path: Path) -> None:
    by_option = tmp_path / "fs-option"
    out = ok(cli("upload", "--home", home, "--provider", "filesystem", "--backup-dir", by_option))
    (stored,) = FileSystemBackupProvider(by_option).list()
    assert stored.ref in out and "uploaded to filesystem" in out
    assert stored.metadata["format"] == "walkit-bundle" and stored.metadata["last_seq"] == template.events
    assert not (by_option / "calls.jsonl").exists() and not (tmp_path / "home-offsite").exists()
    dry = ok(cli("restore", "--from", "external", "--dry-run", "--at", template.last.isoformat(), "--provider", "filesystem", "--backup-dir", by_option))
    assert stored.ref in dry

    other = template.copy(tmp_path / "home2")
    by_env = tmp_path / "fs-env"
    out = ok(cli("upload", "--home", other, BACKUP_USE_FILESYSTEM="true", BACKUP_DIR=str(by_env)))
    (stored,) = FileSystemBackupProvider(by_env).list()
    assert stored.ref in out and stored.metadata["format"] == "walkit-bundle"
    assert not (tmp_path / "home2-offsite").exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("BACKUP_USE_FILESYSTEM", "maybe"), ("WALKIT_PROVIDER", "ftp"), ("WALKIT_MOCK_FAILURE_RATE", "2")],
)
def test_a_bad_environment_value_exits_2_naming_it_and_sends_nothing(home: Path, tmp_path: Path, variable: str, value: str) -> None:
    backup = tmp_path / "valerix"
    result = cli("upload", "--home", home, "--backup-dir", backup, **{variable: value})
    line = one_error_line(result, 2)
    assert variable in line and value in line
    assert not (quota_dir(Home(home)) / "ledger.jsonl").exists() and not backup.exists()
    assert not (home / "bundles").exists() or not any((home / "bundles").iterdir())


def test_a_service_that_is_down_exits_1_and_the_quota_stays_unused(home: Path, tmp_path: Path) -> None:
    backup = tmp_path / "valerix"
    backup.mkdir()
    (backup / "DOWN").touch()
    line = one_error_line(cli("upload", "--home", home, "--backup-dir", backup), 1)
    assert "down" in line and "nothing was sent" in line
    report = json.loads(ok(cli("status", "--json", "--home", home)))
    assert report["quota"]["used"] is False and report["quota"]["next_allowed"] is None and report["last_upload"] is None
    (backup / "DOWN").unlink()
    ok(cli("upload", "--home", home, "--backup-dir", backup))
    assert len(service(backup).list()) == 1


def test_restore_from_external_lists_the_bundles_and_restores_after_the_home_is_lost(template: Template, home: Path, tmp_path: Path) -> None:
    backup = tmp_path / "valerix"
    ok(cli("upload", "--home", home, "--backup-dir", backup))
    (stored,) = service(backup).list()
    for at in (template.mid, template.last):
        dry = ok(cli("restore", "--from", "external", "--dry-run", "--at", at.isoformat(), "--home", home, "--backup-dir", backup))
        assert "bundle 1 (" in dry and stored.ref in dry and "download   1 bundle(s)" in dry
    expected = {at: state_at(Home(home), Target("at", at)) for at in (template.mid, template.last)}
    assert expected[template.mid] != expected[template.last]  # the two instants differ, so the check below means something
    shutil.rmtree(home)
    for number, at in enumerate((template.mid, template.last)):
        dump = tmp_path / f"dump-{number}"
        out = ok(cli("restore", "--from", "external", "--at", at.isoformat(), "--to-dump", dump, "--home", home, "--backup-dir", backup))
        assert "restored into" in out
        assert dump_state(dump) == expected[at]


def test_prune_dry_run_says_what_it_would_remove_and_removes_nothing(home: Path, tmp_path: Path) -> None:
    ok(cli("upload", "--home", home, "--backup-dir", tmp_path / "valerix"))
    before = tree(home)
    out = ok(cli("prune", "--dry-run", "--home", home))
    assert out.startswith("would remove 0 snapshot(s) and 0 WAL segment(s), 0 bytes")
    report = json.loads(ok(cli("prune", "--dry-run", "--json", "--home", home, "--wal-days", "0", "--snapshot-days", "0")))
    assert set(report) == {"snapshots", "segments", "bytes", "kept"} and report["snapshots"] == []  # the newest snapshot stays
    assert tree(home) == before
