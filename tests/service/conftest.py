"""A worker on a simulated schedule clock, against a private sandbox."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from walkit.clock import SimulatedClock
from walkit.providers.mock import MockExternalBackupProvider
from walkit.service.worker import BackupService


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "the condition") -> Any:
    """Poll ``condition`` until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def sim() -> Iterator[tuple[str, SimulatedClock]]:
    """A private sandbox on a simulated clock (its events' wallTimes follow the clock)."""
    from walkit.sandbox import Sandbox

    clock = SimulatedClock(datetime(2026, 3, 2, 1, 0, tzinfo=UTC))
    with Sandbox(clock=clock) as box:
        yield box.uri, clock


@pytest.fixture
def make_worker(sim: tuple[str, SimulatedClock], tmp_path: Path) -> Iterator[Callable[..., tuple[BackupService, SimulatedClock, MockExternalBackupProvider]]]:
    """``make_worker(start=datetime, **options)``: a started BackupService on the sandbox's SimulatedClock
    (tick 20 ms; capture on the same clock), the mock service in tmp_path/offsite with no latency and no failures unless asked; stopped afterwards."""
    started: list[BackupService] = []

    uri, clock = sim

    def make(start: datetime | None = None, failure_rate: float = 0.0, **options: Any) -> tuple[BackupService, SimulatedClock, MockExternalBackupProvider]:
        if start is not None:
            clock.set(start)
        provider = MockExternalBackupProvider(latency_ms=0, failure_rate=failure_rate, state_dir=tmp_path / "offsite", clock=clock, seed=1)
        options.setdefault("tick", 0.02)
        options.setdefault("capture_options", {"fsync_interval": 0.02, "clock": clock})
        service = BackupService(uri, tmp_path / "home", provider=provider, clock=clock, **options)
        service.start()
        started.append(service)
        return service, clock, provider

    yield make
    for service in started:
        service.stop()
