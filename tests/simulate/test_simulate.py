"""walkit.lab.simulate: many days through the real code, deterministic for a seed."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from walkit import ChangeEvent, read_records
from walkit.errors import ConfigError
from walkit.lab.simulate import compare_policies, simulate

DOCUMENT_CHANGES = ("insert", "update", "replace", "delete")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> object:
    # seed 7 with a 40 % failure rate fails some of the six days' calls; the home is kept to read its WAL
    return simulate(days=6, writes_per_day=300, failure_rate=0.4, seed=7, verify_restores=4, keep=True, workdir=tmp_path_factory.mktemp("sim"))


def test_every_write_is_captured_and_one_call_is_made_per_day(run) -> None:
    assert run.summary["writes"] == len(run.events) == 6 * 300
    assert run.summary["changes_captured"] == len(run.events)  # one document change per write
    # Besides them the WAL holds one schema event per collection the writes created (MongoDB 6.0+ streams show
    # the implicit create): its create, just before the event of the write that created it; nothing else.
    wal = [ChangeEvent.from_record(r) for r in read_records(run.home / "wal")]
    assert {e.operation for e in wal} <= {*DOCUMENT_CHANGES, "create"}, {e.operation for e in wal}
    assert sum(e.operation in DOCUMENT_CHANGES for e in wal) == len(run.events)
    creates = [i for i, e in enumerate(wal) if e.operation == "create"]
    assert sorted(wal[i].coll for i in creates) == sorted(set(run.events["collection"])), [wal[i].coll for i in creates]
    for i in creates:
        assert all(e.coll != wal[i].coll for e in wal[:i]), f"an event on {wal[i].coll} before its create"
        assert (wal[i + 1].operation, wal[i + 1].coll) == ("insert", wal[i].coll), f"the create of {wal[i].coll} is not just before its first insert"
    assert run.summary["events_captured"] == len(wal) == len(run.events) + len(creates)
    assert list(run.uploads["day"]) == list(range(6))
    gaps = run.uploads["time"].diff().dropna()
    assert (gaps >= timedelta(hours=24)).all()
    assert run.second_call_refused and run.summary["second_calls_refused"] == 1
    assert run.summary["uploads_ok"] + run.summary["uploads_failed"] == 6


def test_failed_days_happen_and_the_next_bundle_covers_them(run) -> None:
    up = run.uploads
    failed = up[~up["ok"]]
    assert len(failed) >= 1, "the seed was chosen so that some calls fail"
    stored = up[up["outcome"] == "stored"].reset_index(drop=True)
    for before, after in zip(stored.itertuples(), stored.iloc[1:].itertuples(), strict=False):
        assert after.first_seq == before.last_seq + 1  # no hole: a failed day's events are in the next bundle
        assert after.index == before.index + 1
    # the off-site recovery point only grows across a failed day: its tooth is taller than a day
    assert run.summary["worst_offsite_rpo_hours"] > 24


def test_restores_from_the_bundles_alone_reproduce_the_recorded_states(run) -> None:
    assert run.summary["restore_checks"] >= 2
    assert run.summary["restore_checks_passed"] == run.summary["restore_checks"], run.restore_failures


def test_recovery_points_compare_walkit_with_the_baselines(run) -> None:
    rec = run.recovery
    assert list(rec.columns) == ["time", "walkit_db_lost", "walkit_site_lost", "daily_dump_site_lost", "snapshots_db_lost"]
    assert (rec["walkit_db_lost"] < 0.01).all()
    assert (rec["walkit_site_lost"] <= rec["daily_dump_site_lost"] + 1e-9).all()
    assert rec["snapshots_db_lost"].max() <= 6.0 + 1e-9
    assert rec["time"].is_monotonic_increasing and len(rec) == 6 * 24 * 4 + 1


def test_the_tables_have_their_documented_shape(run) -> None:
    assert list(run.events.columns) == ["time", "op", "collection", "key"]
    assert set(run.events["op"]) <= {"insert", "update", "delete"}
    assert isinstance(run.events["time"].dtype, pd.DatetimeTZDtype) and str(run.events["time"].dt.tz) == "UTC"
    assert {"time", "day", "ok", "outcome", "bytes", "index", "first_seq", "last_seq", "covers_to", "snapshot", "error"} <= set(run.uploads.columns)
    assert set(run.windows["kind"]) == {"local WAL", "snapshot", "bundle"}
    assert len(run.snapshots) >= 6 * 4  # every 6 h, plus the first


def test_the_daily_shape_shapes_the_writes() -> None:
    res = simulate(days=2, writes_per_day=2000, failure_rate=0.0, seed=1, snapshot_interval_hours=0)
    hours = res.events["time"].dt.hour.value_counts()
    quiet = hours.reindex([0, 1, 2, 3], fill_value=0).sum()
    busy = hours.reindex([9, 10, 11, 13], fill_value=0).sum()
    assert busy > 5 * quiet, (quiet, busy)


def test_the_same_seed_gives_the_same_run() -> None:
    a = simulate(days=2, writes_per_day=200, failure_rate=0.5, seed=11)
    b = simulate(days=2, writes_per_day=200, failure_rate=0.5, seed=11)
    c = simulate(days=2, writes_per_day=200, failure_rate=0.5, seed=12)
    pd.testing.assert_frame_equal(a.events, b.events)
    cols = ["time", "day", "ok", "outcome", "index", "first_seq", "last_seq", "snapshot"]
    pd.testing.assert_frame_equal(a.uploads[cols], b.uploads[cols])
    pd.testing.assert_frame_equal(a.recovery, b.recovery)
    assert not a.events.equals(c.events)


def test_without_the_wal_bundles_carry_snapshots_only() -> None:
    res = simulate(days=2, writes_per_day=100, failure_rate=0.0, seed=2, wal=False)
    assert res.summary["events_captured"] == 0
    stored = res.uploads[res.uploads["outcome"] == "stored"]
    assert len(stored) == 2 and stored["snapshot"].all()
    assert (stored["last_seq"] == 0).all()


def test_contents_policies_trade_bundle_size_for_chain_length() -> None:
    df = compare_policies(days=4, writes_per_day=150, policies=(1.0, 0.0), seed=3, snapshot_interval_hours=0)
    daily, first_only = df.iloc[0], df.iloc[1]
    # an instant inside bundle i needs the snapshot of a bundle before it: daily, two bundles; first only, all of them
    assert daily["worst_chain"] == 2 and first_only["worst_chain"] == 4
    assert first_only["total_bytes"] < daily["total_bytes"]


@pytest.mark.parametrize("bad", [{"days": 0}, {"failure_rate": 1.5}, {"backup_hour": 24}, {"writes_per_day": -1}])
def test_bad_parameters_are_a_config_error(bad: dict) -> None:
    with pytest.raises(ConfigError):
        simulate(**{"days": 1, "writes_per_day": 1, **bad})
