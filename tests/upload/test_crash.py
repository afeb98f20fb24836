"""``kill -9`` at every step of an upload never leads to a second call inside the window.

For each step, the home is prepared in this process (a capture of a sandbox on a
simulated clock, a snapshot, changes), then ``crash_child.py`` runs the upload in a
subprocess that SIGKILLs itself at that step.  Afterwards, with the mock service living
in a folder both processes share:

- the ledger and the service's call log show exactly what happened up to the kill;
- an upload at the same simulated instant, and an hour later, is refused (exit code 3)
  and writes and sends nothing -- except after a kill before the intent, when nothing
  was spent and the retry succeeds (one stored upload);
- 24 h later the upload succeeds and its bundle starts after the bundle the service
  holds (or at seq 1 when it holds none);
- the service never saw two calls within 24 h and never refused one as rate limited;
- restoring from the service's bundles alone equals ``state_at`` of the local home.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from walkit.errors import QuotaExceededError
from walkit.offsite.external import list_offsite, resolve_chain

from .conftest import DAY, assert_service_rule, open_world
from .crash_child import STEPS

CHILD = Path(__file__).with_name("crash_child.py")
ROOT = Path(__file__).resolve().parents[2]


def service_log(state: Path) -> list[str]:
    """The kinds of the records in the mock service's call log, in order."""
    path = state / "calls.jsonl"
    return [json.loads(line)["kind"] for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@pytest.mark.parametrize("step", STEPS)
def test_kill_9_at_any_step_of_an_upload_never_leads_to_a_second_call_in_the_window(tmp_path: Path, step: str) -> None:
    state = tmp_path / "valerix"
    with open_world(tmp_path, state_dir=state) as w:
        w.write(3)
        w.snapshot()
        early = w.write(2)
        w.write(2)
        events_before = w.events
        t = w.clock.advance(minutes=10)

        child = subprocess.run(
            [sys.executable, str(CHILD), str(w.home.path), str(state), step, t.isoformat()],
            cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )
        assert child.returncode == -signal.SIGKILL, (child.returncode, child.stdout, child.stderr)
        assert child.stdout.strip().splitlines()[-1] == f"killing at {step}", child.stdout

        # -- what the ledger and the service recorded up to the kill
        calls, listed = w.ledger.calls(), w.mock.list()
        if step == "before_intent":
            assert calls == [] and service_log(state) == [] and listed == []
        else:
            (call,) = calls
            assert call.ok is None and call.spent and call.at == t
            assert call.what["first_seq"] == 1 and call.what["last_seq"] == events_before
            if step == "after_intent":
                assert service_log(state) == [] and listed == []
            elif step == "mid_call":
                assert service_log(state) == ["call"] and listed == []  # interrupted: no result, nothing listed
                assert [c["outcome"] for c in w.mock.calls] == ["failed"]
                assert [p for p in (state / "blobs").iterdir() if ".tmp-" in p.name]  # killed while copying the bundle
            else:
                assert service_log(state) == ["call", "result"] and [c["outcome"] for c in w.mock.calls] == ["stored"]
                assert [b.metadata["id"] for b in listed] == [call.what["id"]]

        # -- the same instant, and an hour later
        for hours in (0, 1):
            w.clock.set(t + timedelta(hours=hours))
            before = (w.ledger_bytes(), w.mock.upload_calls, service_log(state))
            if step == "before_intent" and hours == 0:  # nothing was spent: the retry is the day's call
                assert w.upload().ref
                assert len(w.mock.list()) == 1 and w.mock.upload_calls == 1
                continue
            with pytest.raises(QuotaExceededError) as info:
                w.upload()
            assert info.value.exit_code == 3 and info.value.next_allowed == t + DAY
            assert (w.ledger_bytes(), w.mock.upload_calls, service_log(state)) == before

        # -- the next day
        w.clock.set(t + DAY - timedelta(hours=1))
        late = w.write(2)
        w.clock.set(t + DAY)
        final = w.upload()
        assert final.ref and final.bundle is not None
        meta = final.bundle.metadata()
        held = step in ("before_intent", "after_call", "before_result")  # the service holds the first bundle
        assert meta["index"] == (2 if held else 1)
        assert meta["first_seq"] == (events_before + 1 if held else 1) and meta["last_seq"] == w.events
        assert (meta["snapshot"] is None) == held  # the snapshot went with the first bundle, or goes now
        chain = resolve_chain(list_offsite(w.mock))
        assert chain.bundles[-1].meta["id"] == meta["id"] and not chain.orphans and not chain.missing()

        assert_service_rule(w.mock)
        assert all("RateLimitError" not in (c.error or "") for c in w.ledger.calls())
        assert w.bundle_files() == []  # whatever the killed upload left behind is gone
        for at in (early, late):
            assert w.offsite_state(at) == w.local_state(at)
