"""MockExternalBackupProvider: the Valerix simulation's own rules, across threads and processes."""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from walkit.clock import SimulatedClock
from walkit.errors import ConfigError, ProviderError, ProviderUnavailableError, RateLimitError, StorageLimitError
from walkit.providers import OUTCOMES, MockExternalBackupProvider

from .helpers import kill_mid_upload, python


def mock(clock: SimulatedClock, **options: object) -> MockExternalBackupProvider:
    options = {"latency_ms": 0, "failure_rate": 0, **options}
    return MockExternalBackupProvider(clock=clock, **options)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "state_dir"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, object]:
    return {} if request.param == "memory" else {"state_dir": tmp_path / "svc"}


def test_defaults_and_seed_aliases() -> None:
    p = MockExternalBackupProvider()
    assert (p.latency_ms, p.failure_rate, p.storage_limit_bytes, p.rate_limit_hours) == (500, 0.05, 500 * 1024 * 1024, 24)
    q = MockExternalBackupProvider(latencyMs=5, failureRate=0.5, storageLimitBytes=1000)
    assert (q.latency_ms, q.failure_rate, q.storage_limit_bytes) == (5, 0.5, 1000)
    with pytest.raises(ConfigError, match="latency_ms=7 and latencyMs=5"):
        MockExternalBackupProvider(latency_ms=7, latencyMs=5)


@pytest.mark.parametrize(
    "options",
    [
        {"latency_ms": -1},
        {"failure_rate": 1.5},
        {"failure_rate": "often"},
        {"storage_limit_bytes": -5},
        {"max_upload_bytes": 1.5},
        {"rate_limit_hours": -1},
    ],
)
def test_bad_options_are_config_errors(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=next(iter(options))):
        MockExternalBackupProvider(**options)  # type: ignore[arg-type]


def test_latency_is_spent_on_the_clock() -> None:
    clock = SimulatedClock()
    start = clock.now()
    p = MockExternalBackupProvider(failure_rate=0, clock=clock)
    ref = p.upload(b"x", {})
    assert clock.now() - start == timedelta(milliseconds=500)
    p.download(ref)
    assert clock.now() - start == timedelta(seconds=1)


def test_second_upload_within_24h_is_refused_counted_and_stores_nothing(where: dict[str, object]) -> None:
    clock = SimulatedClock()
    p = mock(clock, **where)
    first = p.upload(b"day one", {"n": 1})
    clock.advance(hours=23, minutes=59)
    with pytest.raises(RateLimitError) as info:
        p.upload(b"too soon", {"n": 2})
    assert info.value.sent is True
    assert info.value.exit_code == 3
    message = str(info.value)
    assert "second call" in message and "next is allowed at 2026-01-02T00:00:00" in message
    assert [b.ref for b in p.list()] == [first]
    assert p.upload_calls == 2
    assert [c["outcome"] for c in p.calls] == ["stored", "rate_limited"]

    clock.advance(minutes=1)  # 24 h after the first call: the refused one did not move the window
    second = p.upload(b"day two", {"n": 3})
    assert [b.ref for b in p.list()] == [first, second]
    assert p.download(second) == b"day two"
    calls = p.calls
    assert [c["outcome"] for c in calls] == ["stored", "rate_limited", "stored"]
    assert [c["ok"] for c in calls] == [True, False, True]
    assert [c["ref"] for c in calls] == [first, None, second]
    assert [c["size"] for c in calls] == [7, 8, 7]
    assert [c["at"] for c in calls] == [
        datetime(2026, 1, 1, tzinfo=UTC),
        calls[0]["at"] + timedelta(hours=23, minutes=59),
        calls[0]["at"] + timedelta(hours=24),
    ]
    assert set(calls[0]) == {"at", "ok", "outcome", "ref", "size"}


def test_rate_limit_can_be_turned_off() -> None:
    p = mock(SimulatedClock(), rate_limit_hours=0)
    for i in range(3):
        p.upload(bytes([i]), {})
    assert len(p.list()) == 3


def test_failure_rate_1_fails_every_call_and_counts_it(where: dict[str, object]) -> None:
    clock = SimulatedClock()
    p = mock(clock, failure_rate=1.0, **where)
    for _ in range(3):
        with pytest.raises(ProviderError) as info:
            p.upload(b"doomed", {})
        assert type(info.value) is ProviderError
        assert info.value.sent is True
        assert "simulated failure" in str(info.value)
        clock.advance(hours=24)
    assert p.list() == []
    assert p.upload_calls == 3
    assert [(c["outcome"], c["ok"], c["ref"]) for c in p.calls] == [("failed", False, None)] * 3
    # a failed call still starts the window
    with pytest.raises(ProviderError, match="simulated failure"):
        p.upload(b"x", {})
    clock.advance(hours=1)
    with pytest.raises(RateLimitError):
        p.upload(b"x", {})
    assert outcomes(p) == ["failed"] * 4 + ["rate_limited"]


def outcomes(p: MockExternalBackupProvider) -> list[str]:
    found = [c["outcome"] for c in p.calls]
    assert set(found) <= set(OUTCOMES), found  # every outcome the mock reports is a documented one
    return found


def test_failures_are_deterministic_per_seed_and_shared_through_state_dir(tmp_path: Path) -> None:
    clock = SimulatedClock()
    shared = tmp_path / "shared"
    a = mock(clock, failure_rate=0.5, seed=7, state_dir=shared)
    b = mock(clock, failure_rate=0.5, seed=7, state_dir=shared)
    alone = mock(SimulatedClock(), failure_rate=0.5, seed=7)
    other_seed = mock(SimulatedClock(), failure_rate=0.5, seed=8)
    for i in range(16):
        for p in (a if i % 2 == 0 else b, alone, other_seed):  # a and b take turns on one service
            try:
                p.upload(b"x", {})
            except ProviderError:
                pass
            assert isinstance(p.clock, SimulatedClock)
            p.clock.advance(hours=24)  # a and b share one clock
    shared_outcomes = outcomes(a)
    assert len(shared_outcomes) == 16
    assert shared_outcomes == outcomes(b) == outcomes(alone)
    assert set(shared_outcomes) == {"stored", "failed"}  # seed 7 gives both at 50 %
    assert outcomes(other_seed) != shared_outcomes


def test_storage_limit_and_max_upload(where: dict[str, object]) -> None:
    clock = SimulatedClock()
    p = mock(clock, storage_limit_bytes=100, max_upload_bytes=70, **where)
    assert (p.limits().max_upload_bytes, p.limits().free_bytes) == (70, 100)
    p.upload(b"a" * 60, {})
    assert p.limits().free_bytes == 40
    assert p.limits().refusal(60) is not None
    clock.advance(hours=24)

    with pytest.raises(StorageLimitError) as info:
        p.upload(b"b" * 50, {})
    assert info.value.sent is True
    assert "60 of its 100 bytes are used" in str(info.value)
    clock.advance(hours=24)
    with pytest.raises(StorageLimitError, match="more than the 70"):
        p.upload(io.BytesIO(b"c" * 71), {})
    clock.advance(hours=24)
    p.upload(b"d" * 40, {})
    assert p.limits().free_bytes == 0
    assert [c["outcome"] for c in p.calls] == ["stored", "storage_full", "too_large", "stored"]
    assert [b.size for b in p.list()] == [60, 40]


def test_unlimited_storage() -> None:
    p = mock(SimulatedClock(), storage_limit_bytes=None)
    p.upload(b"x" * 1000, {})
    assert p.limits().free_bytes is None


def test_down_by_attribute(where: dict[str, object]) -> None:
    clock = SimulatedClock()
    p = mock(clock, **where)
    ref = p.upload(b"kept", {})
    clock.advance(hours=24)
    p.down = True
    assert p.health_check() is False
    for call in (lambda: p.upload(b"x", {}), lambda: p.download(ref), p.list, p.limits):
        with pytest.raises(ProviderUnavailableError) as info:
            call()
        assert info.value.sent is False
        assert "down" in str(info.value)
    assert p.upload_calls == 1  # calls while down never reached it
    p.down = False
    assert p.health_check() is True
    p.upload(b"back", {})
    assert outcomes(p) == ["stored", "stored"]


def test_down_by_file_seen_by_another_instance(tmp_path: Path) -> None:
    clock = SimulatedClock()
    state = tmp_path / "svc"
    p = mock(clock, state_dir=state)
    other = mock(clock, state_dir=state)
    (state / "DOWN").touch()
    assert other.health_check() is False
    with pytest.raises(ProviderUnavailableError, match="DOWN"):
        other.upload(b"x", {})
    with pytest.raises(ProviderUnavailableError):
        p.list()
    (state / "DOWN").unlink()
    assert other.health_check() is True
    other.upload(b"x", {})
    assert p.upload_calls == 1


def test_state_dir_is_shared_between_instances(tmp_path: Path) -> None:
    clock = SimulatedClock()
    a = mock(clock, state_dir=tmp_path / "svc")
    ref = a.upload(b"from a", {"by": "a"})
    b = mock(clock, state_dir=tmp_path / "svc")
    assert b.download(ref) == b"from a"
    with pytest.raises(RateLimitError):
        b.upload(b"from b", {})
    assert [c["outcome"] for c in a.calls] == ["stored", "rate_limited"]


def test_upload_is_streamed_to_state_dir(tmp_path: Path) -> None:
    import tracemalloc

    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for _ in range(12):
            f.write(os.urandom(1 << 20))
    p = mock(SimulatedClock(), state_dir=tmp_path / "svc")
    tracemalloc.start()
    try:
        p.upload(src, {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_a_source_that_fails_mid_read_stores_nothing(tmp_path: Path) -> None:
    class Broken(io.BytesIO):
        reads = 0

        def read(self, n: int | None = -1) -> bytes:
            self.reads += 1
            if self.reads > 2:
                raise OSError("disk went away")
            return super().read(n)

    clock = SimulatedClock()
    p = mock(clock, state_dir=tmp_path / "svc")
    with pytest.raises(ProviderError, match="could not read the data to upload .*disk went away"):
        p.upload(Broken(b"z" * (5 << 20)), {})
    assert p.list() == []
    assert outcomes(p) == ["failed"]
    assert not [n for n in os.listdir(tmp_path / "svc" / "blobs")]


CONCURRENT = """
import os, sys, time
from walkit.errors import RateLimitError
from walkit.providers.mock import MockExternalBackupProvider

read_log = MockExternalBackupProvider._call_log
def slow_read_log(self):  # widen the race: a slow disk between reading the log and writing to it
    log = read_log(self)
    time.sleep(0.3)
    return log
MockExternalBackupProvider._call_log = slow_read_log

p = MockExternalBackupProvider(latency_ms=100, failure_rate=0, state_dir=sys.argv[1])
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.002)
try:
    print("stored", p.upload(b"from " + sys.argv[3].encode(), {"who": sys.argv[3]}), flush=True)
except RateLimitError as exc:
    print("rate_limited", exc, flush=True)
"""


def test_two_processes_uploading_at_once_only_one_succeeds(tmp_path: Path) -> None:
    state, go = tmp_path / "svc", tmp_path / "go"
    MockExternalBackupProvider(state_dir=state)  # create the folder before the race
    children = [python(CONCURRENT, str(state), str(go), who) for who in ("one", "two")]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == b"ready", child.communicate()[1].decode()
        go.touch()  # both wait at the barrier, then upload within a few ms of each other
        results = [child.communicate(timeout=30) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert [c.returncode for c in children] == [0, 0], [r[1].decode() for r in results]
    lines = sorted(r[0].decode().strip() for r in results)
    assert lines[0].startswith("rate_limited") and lines[1].startswith("stored"), lines
    p = MockExternalBackupProvider(state_dir=state)
    assert len(p.list()) == 1
    assert sorted(outcomes(p)) == ["rate_limited", "stored"]


KILLED = """
import sys
from walkit.providers.mock import MockExternalBackupProvider
p = MockExternalBackupProvider(latency_ms=0, failure_rate=0, state_dir=sys.argv[1])
p.upload(sys.argv[2], {"who": "killed"})
print("finished", flush=True)
"""


def test_state_survives_kill_9_mid_upload(tmp_path: Path) -> None:
    state, fifo = tmp_path / "svc", tmp_path / "feed"
    MockExternalBackupProvider(state_dir=state)
    os.mkfifo(fifo)
    kill_mid_upload(python(KILLED, str(state), str(fifo)), fifo, state / "blobs")

    leftovers = [n for n in os.listdir(state / "blobs")]
    assert leftovers and all(n.startswith(".") and ".tmp-" in n for n in leftovers)  # the half-written blob
    clock = SimulatedClock(datetime.now(UTC))
    p = mock(clock, state_dir=state)
    assert p.list() == []  # nothing half-written is listed
    assert [(c["outcome"], c["ok"]) for c in p.calls] == [("failed", False)]  # the interrupted call counts
    with pytest.raises(RateLimitError):
        p.upload(b"too soon after the interrupted call", {})
    clock.advance(hours=24, seconds=1)
    ref = p.upload(b"after the crash", {"n": 2})
    assert p.download(ref) == b"after the crash"
    assert [(b.ref, b.metadata) for b in p.list()] == [(ref, {"n": 2})]
    assert outcomes(p) == ["failed", "rate_limited", "stored"]
    assert sorted(os.listdir(state / "blobs")) == sorted([ref, ref + ".meta.json"])  # leftovers swept


def test_a_torn_last_line_of_the_call_log_is_ignored(tmp_path: Path) -> None:
    clock = SimulatedClock()
    p = mock(clock, state_dir=tmp_path / "svc")
    p.upload(b"x", {})
    with (tmp_path / "svc" / "calls.jsonl").open("ab") as f:
        f.write(b'{"kind": "call", "n": 2, "at": "2026-01')  # a crash while appending
    assert outcomes(p) == ["stored"]
    clock.advance(hours=24)
    p.upload(b"y", {})
    assert outcomes(p) == ["stored", "stored"]
