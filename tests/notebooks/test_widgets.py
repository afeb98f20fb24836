"""The restore explorer without a browser: Explorer's answers, and the view driven through its controller."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd
import pymongo
import pytest

from tests.helpers import capturing, unique
from walkit import Home, RestoreError, SnapshotInfo, Target, WalkitError, restore, take_snapshot
from walkit.lab.widgets import DIFF_COLUMNS, EVENT_COLUMNS, Explorer, ExplorerController, explorer_view

COUNTRIES = ["NL", "DE", "FR"]


@dataclass
class Story:
    """A home whose WAL holds a known workload with a mistake in the middle."""

    uri: str
    home: Home
    db: str
    snapshot: SnapshotInfo
    writes: list[tuple[str, str, Any]] = field(default_factory=list)  # (op, collection, _id), in order
    deleted: list[str] = field(default_factory=list)  # the customers the mistake deleted
    mistake_at: datetime | None = None  # the first delete's wall time (from the WAL)
    client_before: datetime | None = None  # our clock, just before the mistake

    @property
    def just_before(self) -> datetime:
        assert self.mistake_at is not None
        return self.mistake_at - timedelta(milliseconds=1)


@pytest.fixture(scope="module")
def story(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    name = unique("explorer")
    home = Home(tmp_path_factory.mktemp("explorer") / "home")
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_uri)
    db = client[name]
    db.customers.insert_many([{"_id": f"c{i:02d}", "name": f"customer {i}", "country": COUNTRIES[i % 3], "tier": "basic"} for i in range(9)])
    db.orders.insert_many([{"_id": i, "customer": f"c{i % 9:02d}", "amount": 10 * i, "status": "paid"} for i in range(5)])
    snap = take_snapshot(mongo_uri, home, database=name, progress=False)
    story = Story(mongo_uri, home, name, snap)
    pause = 0.02
    with capturing(mongo_uri, home.path, database=name):
        for i in range(100, 105):
            db.orders.insert_one({"_id": i, "customer": "c01", "amount": i, "status": "pending"})
            story.writes.append(("insert", "orders", i))
            time.sleep(pause)
        for i in (100, 101):
            db.orders.update_one({"_id": i}, {"$set": {"status": "paid"}})
            story.writes.append(("update", "orders", i))
            time.sleep(pause)
        time.sleep(0.25)
        story.client_before = datetime.now(UTC)
        time.sleep(0.05)
        story.deleted = sorted(d["_id"] for d in db.customers.find({"country": "NL"}))
        db.customers.delete_many({"country": "NL"})  # the mistake
        story.writes += [("delete", "customers", k) for k in story.deleted]
        time.sleep(0.25)
        for i in (105, 106):
            db.orders.insert_one({"_id": i, "customer": "c02", "amount": i, "status": "pending"})
            story.writes.append(("insert", "orders", i))
            time.sleep(pause)
        db.customers.update_one({"_id": "c01"}, {"$set": {"tier": "gold"}})
        story.writes.append(("update", "customers", "c01"))
        time.sleep(pause)
        db.orders.delete_one({"_id": 100})
        story.writes.append(("delete", "orders", 100))
    # capture's stop caught up with every acknowledged write and fsynced it
    events = Explorer(home).events()
    story.mistake_at = events[(events["op"] == "delete") & (events["namespace"] == f"{name}.customers")]["time"].min().to_pydatetime()
    try:
        yield story
    finally:
        client.drop_database(name)
        client.close()


@pytest.fixture
def explorer(story: Story) -> Explorer:
    return Explorer(story.home, story.uri, database=story.db)


def _ids(frame: pd.DataFrame) -> list[Any]:
    return sorted(frame["_id"]) if "_id" in frame else []


# -- Explorer ---------------------------------------------------------------------------------


def test_events_rows_match_the_writes(story: Story, explorer: Explorer) -> None:
    events = explorer.events()
    assert list(events.columns) == EVENT_COLUMNS
    tail = events.tail(len(story.writes))
    assert [(r.op, r.namespace, r.key) for r in tail.itertuples()] == [(op, f"{story.db}.{c}", k) for op, c, k in story.writes]
    head = events.iloc[: len(events) - len(story.writes)]  # capture starts at the snapshot's scan start: seed writes may repeat
    assert set(head["op"]) <= {"insert"} and len(head) <= 2
    assert events["seq"].is_monotonic_increasing and events["seq"].is_unique
    assert str(events["time"].dt.tz) == "UTC" and events["time"].is_monotonic_increasing
    assert (tail[tail["op"] == "delete"]["summary"] == "deleted").all()
    update = tail[(tail["op"] == "update") & (tail["key"] == "c01")].iloc[0]
    assert update["summary"] == 'set tier="gold"'
    insert = tail[tail["key"] == 105].iloc[0]
    assert '"customer": "c02"' in insert["summary"] and "_id" not in insert["summary"]
    assert abs((story.mistake_at - story.client_before).total_seconds()) < 2  # type: ignore[operator]


def test_window_bounds(story: Story, explorer: Explorer) -> None:
    window = explorer.window()
    start, end = window
    events = explorer.events()
    assert story.snapshot.end_wall <= start <= events["time"].iloc[-len(story.writes)]
    assert end >= events["time"].iloc[-1]
    assert end <= datetime.now(UTC)
    assert story.just_before in window and window.last_seq == events["seq"].iloc[-1]
    assert explorer.windows() == [window]
    # both ends are restorable; outside them is refused with a walkit error
    assert _ids(explorer.preview(start)[f"{story.db}.customers"]) == [f"c{i:02d}" for i in range(9)]
    assert _ids(explorer.preview(end)[f"{story.db}.orders"]) == [0, 1, 2, 3, 4, 101, 102, 103, 104, 105, 106]
    with pytest.raises(RestoreError):
        explorer.preview(story.snapshot.created - timedelta(seconds=5))
    with pytest.raises(RestoreError, match="future"):
        explorer.preview(datetime.now(UTC) + timedelta(hours=1))


def test_around_the_mistake(story: Story, explorer: Explorer) -> None:
    rows = explorer.around(story.just_before, n=3)
    before, after = rows[rows["position"] == "before"], rows[rows["position"] == "after"]
    assert list(before["op"]) == ["insert", "update", "update"] and list(before["key"]) == [104, 100, 101]
    assert list(after["op"]) == ["delete"] * 3 and list(after["key"]) == story.deleted[:3]
    assert (before["offset_s"] <= 0).all() and (after["offset_s"] > 0).all()
    assert after["offset_s"].iloc[0] == pytest.approx(0.001)
    # an instant after everything: only "before" rows; naive datetimes and ISO strings are UTC
    late = explorer.around(explorer.window().end.replace(tzinfo=None), n=2)
    assert list(late["position"]) == ["before", "before"] and late["key"].iloc[-1] == 100
    assert explorer.around(story.just_before.isoformat(), n=1)["key"].tolist() == [101, story.deleted[0]]


def test_preview_before_and_after_the_mistake(story: Story, explorer: Explorer) -> None:
    customers = f"{story.db}.customers"
    before = explorer.preview(story.just_before)
    after = explorer.preview(story.mistake_at + timedelta(milliseconds=200))  # type: ignore[operator]
    assert set(before) == {customers, f"{story.db}.orders"}
    assert set(story.deleted) <= set(before[customers]["_id"]) and len(before[customers]) == 9
    assert not set(story.deleted) & set(after[customers]["_id"]) and len(after[customers]) == 9 - len(story.deleted)
    assert before[f"{story.db}.orders"].equals(after[f"{story.db}.orders"])  # nothing else happened in between
    frame = before[f"{story.db}.orders"].set_index("_id")
    assert frame.loc[100, "status"] == "paid" and frame.loc[104, "status"] == "pending"
    # the same as walkit.restore(..., as_dataframes=True)
    frames = restore(story.home, Target("at", story.just_before), as_dataframes=True, progress=False).frames
    assert frames is not None and sorted(frames) == sorted(before)
    for ns, df in frames.items():
        assert df.sort_values("_id").reset_index(drop=True).equals(before[ns].sort_values("_id").reset_index(drop=True))


def test_diff_against_the_live_database_and_the_newest_state(story: Story, explorer: Explorer) -> None:
    customers, orders = f"{story.db}.customers", f"{story.db}.orders"
    diff = explorer.diff(story.just_before)
    assert all(list(df.columns) == DIFF_COLUMNS for df in diff.values())
    c = diff[customers]
    assert sorted(c[c["change"] == "removed"]["_id"]) == story.deleted
    changed = c[c["change"] == "changed"].iloc[0]
    assert changed["_id"] == "c01" and changed["fields"] == ["tier"] and changed["then"]["tier"] == "basic" and changed["now"]["tier"] == "gold"
    o = diff[orders]
    assert sorted(o[o["change"] == "added"]["_id"]) == [105, 106]
    assert list(o[o["change"] == "removed"]["_id"]) == [100] and (o["change"] != "changed").all()
    assert list(c["change"]) == sorted(c["change"], key=["removed", "changed", "added"].index)
    summary = explorer.diff_summary(story.just_before).set_index("namespace")
    assert summary.loc[customers].tolist() == [9, 9 - len(story.deleted), 0, len(story.deleted), 1]
    assert summary.loc[orders].tolist() == [10, 11, 2, 1, 0]
    # without a live database, now is the newest restorable state: the same answer here
    offline = Explorer(story.home, database=story.db)
    assert offline.diff_summary(story.just_before).equals(explorer.diff_summary(story.just_before))
    assert (offline.diff_summary(offline.window().end)[["added", "removed", "changed"]] == 0).all().all()


def test_restore_into_a_new_database_and_refuse_an_existing_one(story: Story, explorer: Explorer) -> None:
    target = f"{story.db}_restored"
    client: pymongo.MongoClient = pymongo.MongoClient(story.uri)
    try:
        calls: list[tuple[int, int, str]] = []
        result = explorer.restore_into(story.just_before, story.uri, target, progress=lambda *a: calls.append(a))
        assert [c[:2] for c in calls] == [(0, 3), (1, 3), (2, 3), (3, 3)]
        preview = explorer.preview(story.just_before)
        for coll in ("customers", "orders"):
            restored = sorted(client[target][coll].find(), key=lambda d: str(d["_id"]))
            expected = preview[f"{story.db}.{coll}"].to_dict("records")
            assert restored == sorted(expected, key=lambda d: str(d["_id"]))
            assert result.documents[f"{target}.{coll}"] == len(expected)
        before = client[target].orders.count_documents({})
        with pytest.raises(RestoreError, match="already exists and is not empty.*new database"):
            explorer.restore_into(story.mistake_at, story.uri, target)
        assert client[target].orders.count_documents({}) == before  # nothing was written
        with pytest.raises(RestoreError, match="live database"):
            explorer.restore_into(story.just_before, database=story.db)
        for bad in ("", "a b", "x.y", "a/b"):
            with pytest.raises(RestoreError):
                explorer.restore_into(story.just_before, story.uri, bad)
        with pytest.raises(RestoreError, match="uri"):
            Explorer(story.home).restore_into(story.just_before, database="whatever")
    finally:
        client.drop_database(target)
        client.close()


def test_nothing_restorable_yet(tmp_path: Path) -> None:
    explorer = Explorer(Home(tmp_path / "empty"))
    assert explorer.events().empty and list(explorer.events().columns) == EVENT_COLUMNS
    with pytest.raises(RestoreError, match="no snapshot"):
        explorer.window()
    view = explorer_view(explorer)
    controller = view.controller
    assert controller.window is None and controller.slider.disabled and "no snapshot" in controller.summary.value
    with pytest.raises(WalkitError):
        explorer.preview("not a date")


# -- the view ---------------------------------------------------------------------------------


def _text(html: str) -> str:
    return re.sub(r"<[^>]+>", "", html)


def _walk(widget: Any) -> Iterator[Any]:
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _walk(child)


def test_the_view_builds_and_the_slider_moves_the_preview(story: Story, explorer: Explorer) -> None:
    view = explorer_view(explorer)
    controller: ExplorerController = view.controller
    tree = list(_walk(view))
    classes = {c for widget in tree for c in widget._dom_classes}
    assert {"walkit-explorer", "walkit-preview", "walkit-instant", "walkit-events", "walkit-restore", "walkit-timeline"} <= classes
    assert any(isinstance(x, w.NaiveDatetimePicker | w.DatetimePicker) for x in tree)
    assert any(isinstance(x, w.IntSlider) for x in tree) and any(isinstance(x, w.IntProgress) for x in tree)
    buttons = {x.description for x in tree if isinstance(x, w.Button)}
    assert {"Restore…", "Confirm restore", "◀ event", "event ▶"} <= buttons
    window = explorer.window()
    # it opens at the newest restorable instant: identical to now
    assert controller.instant == window.end and controller.slider.value == controller.slider.max
    assert _text(controller.preview_html.value).count("+0 added, −0 removed, ~0 changed") == 2
    assert "<svg" in controller.timeline.value and "<table" in controller.events_html.value
    # the slider, as the browser moves it: to the window's start (before the mistake)
    newest = controller.preview_html.value
    controller.slider.value = 0
    assert controller.instant == window.start and controller.picker.value == window.start.replace(tzinfo=None)
    assert controller.preview_html.value != newest
    assert f"−{len(story.deleted)} removed" in _text(controller.preview_html.value)
    # the picker, as the browser sets it
    controller.picker.value = story.just_before.replace(tzinfo=None)
    assert controller.instant == story.just_before
    assert controller.slider.value == round((story.just_before - window.start).total_seconds() / controller.resolution)
    html = controller.preview_html.value
    assert all(f"<td>{k}</td>" in html for k in story.deleted) and "walkit-removed" in html
    assert "▲ at or before" in controller.events_html.value and "deleted" in controller.events_html.value
    # ▶: just after the next event (the mistake); ◀: back just before it
    assert controller.step_event(+1) == story.mistake_at
    controller.step_event(-1)
    assert controller.instant == story.mistake_at - timedelta(milliseconds=1)
    # out-of-window instants are clamped
    assert controller.set_instant(window.start - timedelta(days=1)) == window.start
    assert controller.set_step(10**9) == window.end


def test_the_view_restores_in_two_steps(story: Story, explorer: Explorer) -> None:
    controller: ExplorerController = explorer_view(explorer).controller
    target = f"{story.db}_view"
    client: pymongo.MongoClient = pymongo.MongoClient(story.uri)
    try:
        controller.set_instant(story.just_before)
        assert controller.confirm_restore() is None and target not in client.list_database_names()  # not asked for yet
        assert not controller.request_restore("  ")
        assert controller.request_restore(target) and controller.confirm_box.layout.display == "flex"
        assert target in controller.confirm_text.value
        controller.cancel_restore()
        assert controller.confirm_restore() is None and target not in client.list_database_names()
        controller.request_restore(target)
        result = controller.confirm_restore()
        assert result is not None and controller.progress.value == controller.progress.max and controller.progress.bar_style == "success"
        assert sorted(d["_id"] for d in client[target].customers.find()) == [f"c{i:02d}" for i in range(9)]
        assert "restored" in controller.result.value and controller.confirm_box.layout.display == "none"
        # the same name again: refused, said clearly, nothing written
        controller.request_restore(target)
        assert controller.confirm_restore() is None and controller.progress.bar_style == "danger"
        assert "not empty" in (controller.last_error or "") and "refused" in controller.result.value
    finally:
        client.drop_database(target)
        client.close()


def test_the_view_without_a_server_previews_but_does_not_restore(story: Story) -> None:
    controller: ExplorerController = explorer_view(Explorer(story.home, database=story.db)).controller
    assert controller.restore_button.disabled and controller.name.disabled
    assert "newest restorable state" in controller.preview_html.value
    controller.set_instant(story.just_before)
    assert f"−{len(story.deleted)} removed" in _text(controller.preview_html.value)
    assert not controller.request_restore("anything")


def test_schema_changes_read_as_what_they_did_in_the_events_table() -> None:
    from walkit.lab.widgets import _summary
    from walkit.wal.events import ChangeEvent

    def ddl(op: str, desc: dict[str, Any]) -> ChangeEvent:
        return ChangeEvent(seq=1, operation=op, cluster_time=None, wall_time=None, db="d", coll="c", operation_description=desc)

    made = {"indexes": [{"v": 2, "key": {"a": 1}, "name": "a_1"}, {"v": 2, "key": {"b": -1}, "name": "b_-1"}]}
    assert _summary(ddl("createIndexes", made)) == "a_1, b_-1"
    assert _summary(ddl("dropIndexes", {"indexes": [{"name": "a_1"}]})) == "a_1"
    created = _summary(ddl("create", {"capped": True, "size": 4096, "idIndex": {"name": "_id_"}}))
    assert "capped" in created and "4096" in created and "idIndex" not in created
    assert "moderate" in _summary(ddl("modify", {"validationLevel": "moderate"}))
