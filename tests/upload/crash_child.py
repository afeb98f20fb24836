"""One upload that dies by SIGKILL at a chosen step (run by test_crash.py in a subprocess).

    python crash_child.py HOME MOCKSTATE STEP ISO_TIME

Builds a SimulatedClock at ISO_TIME, the mock service living in MOCKSTATE, the home's
quota ledger, and calls walkit.offsite.upload.upload with hooks that kill this very process
(``os.kill(os.getpid(), signal.SIGKILL)``) at STEP:

before_intent   in QuotaLedger._append, before the intent line is written
after_intent    just after the intent is written and fsynced, before the service is called
mid_call        while the service copies the bundle: after the first chunk has been read
after_call      after provider.upload returned, before the ledger records the result
before_result   in QuotaLedger._append, before the result line is written

It prints ``killing at STEP`` just before the kill; if it ever gets past its step, it
exits with status 1 (the test then fails, showing what it printed).
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from walkit.clock import SimulatedClock
from walkit.home import Home
from walkit.offsite.quota import QuotaLedger
from walkit.offsite.upload import quota_dir, upload
from walkit.providers.mock import MockExternalBackupProvider

STEPS = ("before_intent", "after_intent", "mid_call", "after_call", "before_result")


def die(step: str) -> None:
    print(f"killing at {step}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


class DiesAfterFirstChunk:
    """A readable, seekable view of a file that kills the process when its second chunk is asked for."""

    CHUNK = 4096

    def __init__(self, f: Any) -> None:
        self.f, self.reads = f, 0

    def tell(self) -> int:
        return self.f.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.f.seek(offset, whence)

    def read(self, n: int = -1) -> bytes:
        self.reads += 1
        if self.reads > 1:
            die("mid_call")
        return self.f.read(self.CHUNK if n is None or n < 0 else min(n, self.CHUNK))


def main(home_path: str, mock_state: str, step: str, iso_time: str) -> int:
    if step not in STEPS:
        print(f"unknown step {step!r}; one of {', '.join(STEPS)}", file=sys.stderr)
        return 2
    clock = SimulatedClock(datetime.fromisoformat(iso_time))
    provider = MockExternalBackupProvider(state_dir=mock_state, latency_ms=0, failure_rate=0, clock=clock)
    home = Home(home_path)
    ledger = QuotaLedger(quota_dir(home), clock=clock)

    real_append = QuotaLedger._append

    def append(self: QuotaLedger, record: dict[str, Any]) -> None:
        kind = record["kind"]
        if (step, kind) in (("before_intent", "intent"), ("before_result", "result")):
            die(step)
        real_append(self, record)
        if (step, kind) == ("after_intent", "intent"):
            die(step)

    QuotaLedger._append = append  # type: ignore[method-assign]

    real_upload = provider.upload

    def provider_upload(data: Any, metadata: dict[str, Any]) -> str:
        if step == "mid_call":
            with Path(data).open("rb") as f:
                return real_upload(DiesAfterFirstChunk(f), metadata)
        ref = real_upload(data, metadata)
        if step == "after_call":
            die(step)
        return ref

    provider.upload = provider_upload  # type: ignore[method-assign]

    result = upload(home, provider, ledger, clock=clock)
    print(f"the upload finished without reaching {step}: {result.as_dict()}", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
