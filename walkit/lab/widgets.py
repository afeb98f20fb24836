"""The restore explorer: look at the WAL, pick an instant, preview and restore it.

Two layers:

- :class:`Explorer` is the logic, usable without a browser (tests, scripts,
  notebooks): the WAL's events as a DataFrame, the restorable window, the
  events around an instant ("who deleted what at 10:31:07"), a preview of
  every collection at an instant, its difference from now, and a restore of
  that instant into a new database.
- :func:`explorer_view` wraps an Explorer in ipywidgets: a timeline, a
  date-time picker and a fine slider to choose the instant, the events
  around it, the preview with its difference from now, and a guarded
  "restore into a new database" step.  The widgets only call the methods of
  an :class:`ExplorerController`, so tests drive the view without a browser.

Everything is read from the walkit home (local snapshots + WAL) with
walkit's own restore machinery (:func:`walkit.restore.local.state_at`,
:func:`walkit.restore.local.restore`); nothing is written anywhere but the new
database a restore names.  Previews hold the restored state in memory: the
explorer suits databases that fit in RAM.  Instants are UTC (a naive
datetime is taken as UTC).
"""

from __future__ import annotations

import html
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
from bson import json_util
from bson.json_util import RELAXED_JSON_OPTIONS
from pymongo import errors as pm

from walkit.clock import Clock, SystemClock
from walkit.errors import RestoreError, WalkitError
from walkit.home import Home
from walkit.mongo import connect, describe_error, redact
from walkit.restore.local import TEMP, RestoreResult, restore, scan_wal, state_at
from walkit.restore.plan import Target
from walkit.restore.plan import windows as plan_windows
from walkit.restore.replay import DOC
from walkit.restore.replay import _id_key as id_key
from walkit.restore.snapshot import list_snapshots
from walkit.wal.events import ChangeEvent
from walkit.wal.format import read_records

__all__ = ["Explorer", "ExplorerController", "explorer_view", "EVENT_COLUMNS", "DIFF_COLUMNS"]

#: The columns of :meth:`Explorer.events`.
EVENT_COLUMNS = ["seq", "time", "op", "namespace", "key", "summary"]
#: The columns of each DataFrame :meth:`Explorer.diff` returns.
DIFF_COLUMNS = ["_id", "change", "fields", "then", "now"]
_CHANGE_ORDER = {"removed": 0, "changed": 1, "added": 2}
_BAD_DB_CHARS = re.compile(r'[/\\. "$*<>:|?\x00]')

Progress = Callable[[int, int, str], None]
State = dict[str, dict[bytes, dict[str, Any]]]  # "db.coll" -> {_id key: document}


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise WalkitError("the restore explorer needs pandas: pip install 'walkit[pandas]'") from None
    return pd


def _utc(value: Any) -> datetime:
    """An instant as an aware UTC datetime (naive: taken as UTC; ISO strings and pandas Timestamps too)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise WalkitError(f"not an instant: {value!r} (give an ISO 8601 date-time, e.g. 2024-05-01T10:31:07Z)") from None
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        raise WalkitError(f"not an instant: {value!r} (give a datetime)")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _plain(value: Any) -> Any:
    raw = getattr(value, "raw", None)
    if isinstance(raw, bytes):
        return bson.decode(raw, DOC)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _json(value: Any, limit: int | None = None) -> str:
    text = json_util.dumps(_plain(value), json_options=RELAXED_JSON_OPTIONS)
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def _summary(ev: ChangeEvent, limit: int = 120) -> str:
    """One short line saying what an event changed."""
    if ev.operation == "gap":
        return f"GAP: {ev.reason}"
    if ev.operation in ("insert", "replace") and ev.full_document is not None:
        doc = {k: v for k, v in _plain(ev.full_document).items() if k != "_id"}
        return _json(doc, limit)
    if ev.operation == "update" and ev.update_description is not None:
        desc = _plain(ev.update_description)
        parts = [f"{k}={_json(v)}" for k, v in (desc.get("updatedFields") or {}).items()]
        removed = desc.get("removedFields") or []
        text = "set " + ", ".join(parts) if parts else ""
        if removed:
            text += ("; " if text else "") + "unset " + ", ".join(removed)
        return text if len(text) <= limit else text[: limit - 1] + "…"
    if ev.operation == "delete":
        return "deleted"
    if ev.to is not None:
        to = _plain(ev.to)
        return f"to {to.get('db')}.{to.get('coll')}"
    if ev.operation_description is not None:  # create, createIndexes, dropIndexes, modify
        desc = _plain(ev.operation_description)
        if ev.operation in ("createIndexes", "dropIndexes"):
            return ", ".join(str(ix.get("name")) for ix in desc.get("indexes") or [])
        return _json({k: v for k, v in desc.items() if k != "idIndex"}, limit)
    return ""


def _doc_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a == b or bson.encode(a, codec_options=DOC) == bson.encode(b, codec_options=DOC)


def _changed_fields(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    missing = object()
    return sorted(k for k in set(a) | set(b) if a.get(k, missing) != b.get(k, missing))


@dataclass(frozen=True)
class Window:
    """A restorable window: every instant from ``start`` to ``end`` (UTC) can be restored."""

    start: datetime
    end: datetime
    first_seq: int | None
    last_seq: int | None

    def __iter__(self) -> Any:  # start, end = explorer.window()
        return iter((self.start, self.end))

    def __contains__(self, instant: object) -> bool:
        return self.start <= _utc(instant) <= self.end


class Explorer:
    """The restore explorer's logic over a walkit home (see the module docstring).

    ``uri``: the live database, for "now" in :meth:`diff` (without it, now is
    the newest restorable state) and the default server of :meth:`restore_into`.
    ``database``: the database explored (None: the one the snapshots hold).
    Reads are cached; :meth:`refresh` re-reads the WAL, the snapshots and the
    live database (capture may still be writing).
    """

    def __init__(self, home: Home | str | Any, uri: str | None = None, *, database: str | None = None, clock: Clock | None = None, cache: int = 32) -> None:
        self.home = home if isinstance(home, Home) else Home(home)
        self.uri = uri or None
        self.database = database
        self.clock = clock or SystemClock()
        self._cache_size = max(1, cache)
        self.refresh()

    def __repr__(self) -> str:
        return f"Explorer({self.home!r}, uri={redact(self.uri) if self.uri else None!r}, database={self.database!r})"

    def refresh(self) -> None:
        """Forget what was read: the next call reads the WAL, the snapshots and the live database again."""
        self._events: Any = None
        self._windows: list[Window] | None = None
        self._states: OrderedDict[datetime, State] = OrderedDict()
        self._now: State | None = None

    # -- the WAL ------------------------------------------------------------------------
    def events(self) -> Any:
        """The WAL's events (and gap markers, op "gap"), oldest first, as a DataFrame:
        seq, time (UTC), op, namespace ("db.coll"), key (the document's ``_id``), summary."""
        if self._events is None:
            pd = _pandas()
            rows = []
            for rec in read_records(self.home.wal_dir):
                ev = ChangeEvent.from_record(rec)
                key = _plain(ev.document_key).get("_id") if ev.document_key is not None else None
                rows.append((ev.seq, ev.wall_time, ev.operation, ev.namespace, key, _summary(ev)))
            frame = pd.DataFrame(rows, columns=EVENT_COLUMNS)
            frame["time"] = pd.to_datetime(frame["time"], utc=True)
            frame["seq"] = frame["seq"].astype("int64")
            self._events = frame
        return self._events.copy()

    def windows(self) -> list[Window]:
        """Every restorable window, oldest first (one per stretch of WAL without gaps that a snapshot serves)."""
        if self._windows is None:
            snapshots = [s for s in list_snapshots(self.home) if self.database is None or s.covers(self.database)]
            runs, _ = scan_wal(self.home.wal_dir, Target("at", self.clock.now()))
            found = []
            for start, end, run in plan_windows(snapshots, runs):
                if start is None or end is None:
                    continue
                start, end = _utc(start), _utc(end)
                if run.start_wall is not None:  # a restore resolves instants inside the run only
                    start = max(start, _utc(run.start_wall))
                if start <= end:
                    found.append(Window(start, end, run.first_seq, run.last_seq))
            self._windows = found
        return list(self._windows)

    def window(self) -> Window:
        """The newest restorable window (``start, end = explorer.window()``); RestoreError if there is none."""
        found = self.windows()
        if not found:
            snapshots = list_snapshots(self.home)
            if not snapshots:
                raise RestoreError(f"nothing is restorable from {self.home.path}: there is no snapshot yet (take one with `walkit snapshot` while capture runs)")
            raise RestoreError(f"nothing is restorable from {self.home.path}: no snapshot lies inside the WAL's coverage (take one while capture runs)")
        return found[-1]

    def around(self, instant: Any, n: int = 5) -> Any:
        """The ``n`` events at or before ``instant`` and the ``n`` after it, with ``position``
        ("before"/"after") and ``offset_s`` (seconds from the instant)."""
        at = _utc(instant)
        frame = self.events()
        pd = _pandas()
        stamp = pd.Timestamp(at)
        before = frame[frame["time"] <= stamp].tail(n).assign(position="before")
        after = frame[frame["time"] > stamp].head(n).assign(position="after")
        out = pd.concat([before, after])
        out["offset_s"] = (out["time"] - stamp).dt.total_seconds()
        return out.reset_index(drop=True)

    # -- states ---------------------------------------------------------------------------
    def state(self, instant: Any) -> State:
        """Every collection at ``instant``: ``{"db.coll": {_id key: document}}`` (cached; do not modify)."""
        at = _utc(instant)
        if at in self._states:
            self._states.move_to_end(at)
            return self._states[at]
        raw = state_at(self.home, Target("at", at), database=self.database, clock=self.clock)
        state: State = {}
        for ns, docs in raw.items():
            decoded = (bson.decode(doc, DOC) for doc in docs)
            state[ns] = {id_key(doc["_id"]): doc for doc in decoded}
        self._states[at] = state
        while len(self._states) > self._cache_size:
            self._states.popitem(last=False)
        return state

    def preview(self, instant: Any) -> dict[str, Any]:
        """Every collection at ``instant`` as ``{"db.coll": DataFrame}`` (one row per document, ``_id`` order)."""
        pd = _pandas()
        return {ns: pd.DataFrame(list(docs.values())) if docs else pd.DataFrame(columns=["_id"]) for ns, docs in self.state(instant).items()}

    def now(self) -> State:
        """The state a preview is compared with: the live database when ``uri`` was given, else the newest restorable state."""
        if self._now is None:
            self._now = self._live() if self.uri else self._newest()
        return self._now

    def _newest(self) -> State:
        window = self.window()
        if window.last_seq is not None:
            raw = state_at(self.home, Target("seq", window.last_seq), database=self.database, clock=self.clock)
            return {ns: {id_key(d["_id"]): d for d in (bson.decode(x, DOC) for x in docs)} for ns, docs in raw.items()}
        return self.state(window.end)

    def _databases(self) -> list[str]:
        if self.database:
            return [self.database]
        names: set[str] = set()
        for snap in list_snapshots(self.home):
            names.update(e.db for e in snap.collections)
            if snap.database:
                names.add(snap.database)
        names.update(ns.split(".", 1)[0] for ns in self.events()["namespace"] if ns)
        return sorted(names)

    def _live(self) -> State:
        assert self.uri is not None
        client = connect(self.uri)
        state: State = {}
        try:
            for name in self._databases():
                db = client.get_database(name, codec_options=DOC)
                for coll in db.list_collection_names():
                    if coll.startswith(("system.", TEMP)):
                        continue
                    state[f"{name}.{coll}"] = {id_key(doc["_id"]): doc for doc in db[coll].find()}
        except pm.PyMongoError as exc:
            raise RestoreError(f"cannot read the live database at {redact(self.uri)}: {describe_error(exc) or exc}") from None
        finally:
            client.close()
        return dict(sorted(state.items()))

    def diff(self, instant: Any) -> dict[str, Any]:
        """Per collection, the documents that differ between ``instant`` ("then") and now:
        a DataFrame of _id, change ("removed": there then, gone now; "added": new since;
        "changed"), fields (the top-level fields that differ), then, now (the documents)."""
        pd = _pandas()
        then, now = self.state(instant), self.now()
        out = {}
        for ns in sorted(set(then) | set(now)):
            a, b = then.get(ns, {}), now.get(ns, {})
            rows: list[tuple[bytes, Any, str, list[str], dict[str, Any] | None, dict[str, Any] | None]] = []
            for key in sorted(set(a) | set(b)):
                old, new = a.get(key), b.get(key)
                if old is None:
                    assert new is not None
                    rows.append((key, new["_id"], "added", sorted(new), None, new))
                elif new is None:
                    rows.append((key, old["_id"], "removed", sorted(old), old, None))
                elif not _doc_equal(old, new):
                    rows.append((key, old["_id"], "changed", _changed_fields(old, new), old, new))
            rows.sort(key=lambda r: (_CHANGE_ORDER[r[2]], r[0]))
            out[ns] = pd.DataFrame([r[1:] for r in rows], columns=DIFF_COLUMNS)
        return out

    def diff_summary(self, instant: Any) -> Any:
        """One row per collection: namespace, documents then and now, added, removed, changed."""
        pd = _pandas()
        then, now = self.state(instant), self.now()
        rows = []
        for ns, frame in self.diff(instant).items():
            counts = frame["change"].value_counts()
            rows.append((ns, len(then.get(ns, {})), len(now.get(ns, {})), *(int(counts.get(c, 0)) for c in ("added", "removed", "changed"))))
        return pd.DataFrame(rows, columns=["namespace", "then", "now", "added", "removed", "changed"])

    # -- restore --------------------------------------------------------------------------------
    def restore_into(self, instant: Any, uri: str | None = None, database: str | None = None, *, progress: Progress | None = None) -> RestoreResult:
        """Restore the state at ``instant`` into the new database ``database`` on ``uri`` (default: the live server).

        A database that already holds collections is refused (RestoreError) before
        anything is written: the explorer never overwrites.  ``progress(step, steps, message)``
        is called as the restore goes (checking, planning, replaying, done).
        """
        at = _utc(instant)
        uri = uri or self.uri
        steps = 3

        def report(step: int, message: str) -> None:
            if progress is not None:
                progress(step, steps, message)

        if not uri:
            raise RestoreError("name the server to restore into (uri=...): this explorer was made without one")
        name = (database or "").strip()
        if not name:
            raise RestoreError("name the new database to restore into")
        if _BAD_DB_CHARS.search(name) or len(name.encode()) > 63:
            raise RestoreError(f"{name!r} is not a valid MongoDB database name (no spaces, dots, slashes, quotes, $, *, <, >, :, |, ?; at most 63 bytes)")
        report(0, f"checking that {name!r} is new")
        client = connect(uri)
        try:
            existing = sorted(c for c in client[name].list_collection_names() if not c.startswith(TEMP))
        except pm.PyMongoError as exc:
            raise RestoreError(f"cannot reach {redact(uri)}: {describe_error(exc) or exc}") from None
        finally:
            client.close()
        if existing:
            live = " (it is the live database)" if name == self.database and uri == self.uri else ""
            shown = ", ".join(existing[:5]) + (", …" if len(existing) > 5 else "")
            raise RestoreError(
                f"database {name!r} already exists and is not empty{live}: it holds {len(existing)} collection(s) ({shown}); "
                "the explorer restores only into a new database: pick another name "
                "(to replace a database on purpose, use `walkit restore --drop`)"
            )
        report(1, f"planning the restore of {at.isoformat()}")
        report(2, "loading the snapshot and replaying the WAL onto it")
        result = restore(self.home, Target("at", at), to_uri=uri, to_db=name, database=self.database, progress=False, clock=self.clock)
        total = sum(result.documents.values())
        report(3, f"restored {total} document(s) in {len(result.documents)} collection(s) into {name!r} "
                  f"({result.events} event(s) replayed onto snapshot {result.plan.snapshot.id})")
        return result


# -- the widgets --------------------------------------------------------------------------------------

_OP_COLOURS = {"insert": "#2e7d32", "update": "#1565c0", "replace": "#6a1b9a", "delete": "#c62828", "gap": "#000000"}
_OTHER_COLOUR = "#757575"
_RESOLUTIONS = (0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 86400.0)
_MAX_STEPS = 5000
_STYLE = """<style>
.walkit-table { border-collapse: collapse; font-size: 12px; font-family: var(--jp-code-font-family, monospace); }
.walkit-table th, .walkit-table td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; vertical-align: top; }
.walkit-table th { background: #f3f3f3; }
.walkit-table tr.walkit-after td { color: #888; }
.walkit-table tr.walkit-marker td { background: #fde0dc; text-align: center; font-weight: bold; }
.walkit-removed td:first-child { color: #c62828; } .walkit-added td:first-child { color: #2e7d32; } .walkit-changed td:first-child { color: #1565c0; }
</style>"""


def _esc(value: Any, limit: int = 80) -> str:
    if isinstance(value, dict | list):
        text = _json(value, limit)
    elif isinstance(value, datetime):
        text = value.isoformat(timespec="milliseconds")
    else:
        text = "" if value is None or (isinstance(value, float) and value != value) else str(value)
        text = text if len(text) <= limit else text[: limit - 1] + "…"
    return html.escape(text)


def _stamp(dt: datetime) -> str:
    return _utc(dt).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


class ExplorerController:
    """The explorer's widgets and view state; the widgets call these methods only.

    ``set_instant`` (picker), ``set_step`` (slider), ``step_event`` (the ◀/▶
    buttons), ``refresh``, ``request_restore`` / ``confirm_restore`` /
    ``cancel_restore`` (the restore section).  ``widget`` is the container.
    """

    def __init__(self, explorer: Explorer, *, restore_uri: str | None = None, around: int = 5, max_rows: int = 15) -> None:
        import ipywidgets as w

        self.explorer = explorer
        self.restore_uri = restore_uri or explorer.uri
        self.around_n = around
        self.max_rows = max_rows
        self.instant: datetime | None = None
        self.window: Window | None = None
        self.resolution = 1.0
        self.pending: tuple[datetime, str] | None = None  # (instant, database) awaiting confirmation
        self.last_result: RestoreResult | None = None
        self.last_error: str | None = None
        self._syncing = False

        def cls(widget: Any, *names: str) -> Any:
            for name in names:
                widget.add_class(name)
            return widget

        self.summary = cls(w.HTML(), "walkit-summary")
        self.timeline = cls(w.HTML(), "walkit-timeline")
        picker_type = getattr(w, "NaiveDatetimePicker", None)
        if picker_type is not None:
            self.picker = cls(picker_type(description="instant (UTC)", style={"description_width": "initial"}), "walkit-picker")
        else:  # older ipywidgets: an ISO text field
            self.picker = cls(w.Text(description="instant (UTC)", placeholder="2024-05-01T10:31:07.250", continuous_update=False), "walkit-picker")
        self.previous_button = cls(w.Button(description="◀ event", tooltip="just before the previous event", layout=w.Layout(width="auto")), "walkit-previous")
        self.next_button = cls(w.Button(description="event ▶", tooltip="just after the next event", layout=w.Layout(width="auto")), "walkit-next")
        self.refresh_button = cls(w.Button(description="↻", tooltip="read the WAL, the snapshots and the live database again", layout=w.Layout(width="auto")), "walkit-refresh")
        self.label = cls(w.HTML(), "walkit-instant-label")
        self.slider = cls(
            w.IntSlider(min=0, max=1, value=1, step=1, description="Δ from start", continuous_update=False, readout=True,
                        layout=w.Layout(width="98%"), style={"description_width": "initial"}),
            "walkit-slider",
        )
        self.events_html = cls(w.HTML(), "walkit-events")
        self.preview_html = cls(w.HTML(layout=w.Layout(max_height="460px", overflow="auto")), "walkit-preview")
        self.name = cls(w.Text(description="new database", placeholder="e.g. shop_restored", style={"description_width": "initial"}), "walkit-restore-name")
        self.restore_button = cls(w.Button(description="Restore…", icon="history", tooltip="restore the chosen instant into a new database"), "walkit-restore-button")
        self.confirm_text = cls(w.HTML(), "walkit-confirm-text")
        self.confirm_button = cls(w.Button(description="Confirm restore", button_style="danger"), "walkit-confirm-button")
        self.cancel_button = cls(w.Button(description="Cancel"), "walkit-cancel-button")
        self.confirm_box = cls(w.HBox([self.confirm_text, self.confirm_button, self.cancel_button]), "walkit-confirm")
        self.confirm_box.layout.display = "none"
        self.progress = cls(w.IntProgress(value=0, min=0, max=3, description="restore", style={"description_width": "initial"}), "walkit-progress")
        self.result = cls(w.HTML(), "walkit-result")
        self.restore_box = cls(
            w.VBox([
                w.HTML("<b>Restore into a new database</b> (an existing, non-empty database is refused)"),
                w.HBox([self.name, self.restore_button]),
                self.confirm_box,
                self.progress,
                self.result,
            ]),
            "walkit-restore",
        )
        self.instant_box = cls(w.VBox([
            w.HBox([self.picker, self.previous_button, self.next_button, self.refresh_button, self.label]),
            self.slider,
        ]), "walkit-instant")
        self.widget = cls(
            w.VBox([w.HTML(_STYLE), self.summary, self.timeline, self.instant_box, self.events_html, self.preview_html, self.restore_box]),
            "walkit-explorer",
        )
        self.widget.controller = self

        self.picker.observe(self._on_picker, names="value")
        self.slider.observe(self._on_slider, names="value")
        self.previous_button.on_click(lambda _b: self.step_event(-1))
        self.next_button.on_click(lambda _b: self.step_event(+1))
        self.refresh_button.on_click(lambda _b: self.refresh())
        self.restore_button.on_click(lambda _b: self.request_restore())
        self.confirm_button.on_click(lambda _b: self.confirm_restore())
        self.cancel_button.on_click(lambda _b: self.cancel_restore())
        if not self.restore_uri:
            for widget in (self.name, self.restore_button):
                widget.disabled = True
            self.result.value = "restoring needs a server: make the Explorer with uri=… (or pass restore_uri=)"
        self.refresh(read=False)

    # -- choosing the instant --------------------------------------------------------------
    def refresh(self, read: bool = True) -> None:
        """Re-read everything and redraw (the instant is kept when it is still restorable)."""
        if read:
            self.explorer.refresh()
        try:
            self.window = self.explorer.window()
        except WalkitError as exc:
            self.window = None
            self.summary.value = f"<b>Restore explorer</b>: {html.escape(str(exc))}"
            for widget in (self.slider, self.picker, self.previous_button, self.next_button, self.restore_button):
                widget.disabled = True
            self.timeline.value = self._timeline_svg()
            return
        start, end = self.window.start, self.window.end
        span = (end - start).total_seconds()
        self.resolution = next((r for r in _RESOLUTIONS if span / r <= _MAX_STEPS), _RESOLUTIONS[-1])
        steps = max(1, int(span / self.resolution))
        events = self.explorer.events()
        self.summary.value = (
            f"<b>Restore explorer</b> — {html.escape(str(self.explorer.home.path))}: {len(events)} WAL record(s); "
            f"restorable from <b>{_stamp(start)}</b> to <b>{_stamp(end)}</b> ({span:.3f} s); "
            f"slider step {self.resolution:g} s; now = {'the live database' if self.explorer.uri else 'the newest restorable state'}"
        )
        self._syncing = True
        try:
            self.slider.min, self.slider.max = 0, steps
            if hasattr(self.picker, "min"):
                naive = (start.replace(tzinfo=None), end.replace(tzinfo=None))
                self.picker.value = None
                self.picker.min, self.picker.max = naive
        finally:
            self._syncing = False
        self.set_instant(self.instant if self.instant is not None and self.instant in self.window else end)

    def set_instant(self, instant: Any) -> datetime:
        """Choose the instant (clamped to the restorable window) and redraw; returns it."""
        if self.window is None:
            raise RestoreError("nothing is restorable yet")
        at = min(max(_utc(instant), self.window.start), self.window.end)
        self.instant = at
        self._syncing = True
        try:
            offset = (at - self.window.start).total_seconds()
            self.slider.value = min(self.slider.max, max(0, round(offset / self.resolution)))
            naive = at.replace(tzinfo=None)
            self.picker.value = naive if hasattr(self.picker, "min") else naive.isoformat(timespec="milliseconds")
        finally:
            self._syncing = False
        self._render()
        return at

    def set_step(self, step: int) -> datetime:
        """Choose the instant ``step`` slider steps after the window's start (the slider's end is the window's end)."""
        if self.window is None:
            raise RestoreError("nothing is restorable yet")
        step = min(self.slider.max, max(0, int(step)))
        at = self.window.end if step >= self.slider.max else self.window.start + timedelta(seconds=step * self.resolution)
        return self.set_instant(at)

    def step_event(self, direction: int) -> datetime | None:
        """Jump to just before the previous event (``direction`` < 0) or just after the next one (> 0)."""
        if self.window is None or self.instant is None:
            return None
        events = self.explorer.events()
        times = events["time"].dropna()
        pd = _pandas()
        stamp = pd.Timestamp(self.instant)
        if direction < 0:
            earlier = times[times <= stamp]
            if earlier.empty:
                return self.set_instant(self.window.start)
            target = earlier.iloc[-1].to_pydatetime() - timedelta(milliseconds=1)
        else:
            later = times[times > stamp]
            if later.empty:
                return self.set_instant(self.window.end)
            target = later.iloc[0].to_pydatetime()
        return self.set_instant(target)

    def _on_slider(self, change: dict[str, Any]) -> None:
        if not self._syncing:
            self.set_step(change["new"])

    def _on_picker(self, change: dict[str, Any]) -> None:
        if self._syncing or change["new"] in (None, ""):
            return
        try:
            self.set_instant(change["new"])
        except WalkitError as exc:
            self.label.value = f"<span style='color:#c62828'>{html.escape(str(exc))}</span>"

    # -- rendering ------------------------------------------------------------------------------
    def _render(self) -> None:
        assert self.instant is not None and self.window is not None
        offset = (self.instant - self.window.start).total_seconds()
        self.label.value = f"<b>{_stamp(self.instant)}</b> (+{offset:.3f} s)"
        self.timeline.value = self._timeline_svg()
        self.events_html.value = self._events_table()
        self.preview_html.value = self._preview()

    def _timeline_svg(self, width: int = 900, height: int = 90, bins: int = 60) -> str:
        events = self.explorer.events().dropna(subset=["time"])
        window = self.window
        if events.empty and window is None:
            return "<i>no events in the WAL yet</i>"
        times = list(events["time"])
        lo = min([t.to_pydatetime() for t in times[:1]] + ([window.start] if window else []))
        hi = max([t.to_pydatetime() for t in times[-1:]] + ([window.end] if window else []))
        span = max((hi - lo).total_seconds(), 1e-3)
        counts: list[dict[str, int]] = [{} for _ in range(bins)]
        for t, op in zip(events["time"], events["op"], strict=True):
            i = min(bins - 1, int((t.to_pydatetime() - lo).total_seconds() / span * bins))
            counts[i][op] = counts[i].get(op, 0) + 1
        top = max([sum(c.values()) for c in counts] + [1])
        plot_h, left, bar_w = height - 30, 10, (width - 20) / bins

        def x_of(dt: datetime) -> float:
            return left + (dt - lo).total_seconds() / span * (width - 20)

        parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' style='font: 10px sans-serif'>"]
        if window is not None:
            x0, x1 = x_of(window.start), x_of(window.end)
            parts.append(f"<rect x='{x0:.1f}' y='0' width='{max(1.0, x1 - x0):.1f}' height='{plot_h}' fill='#e8f5e9'><title>restorable</title></rect>")
        for i, c in enumerate(counts):
            y = float(plot_h)
            for op in ("insert", "update", "replace", "delete", "gap", *sorted(set(c) - set(_OP_COLOURS))):
                n = c.get(op, 0)
                if not n:
                    continue
                h = n / top * (plot_h - 5)
                y -= h
                colour = _OP_COLOURS.get(op, _OTHER_COLOUR)
                parts.append(f"<rect x='{left + i * bar_w + 0.5:.1f}' y='{y:.1f}' width='{max(1.0, bar_w - 1):.1f}' height='{h:.1f}' fill='{colour}'><title>{n} {op}</title></rect>")
        if self.instant is not None:
            x = x_of(self.instant)
            parts.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='0' y2='{plot_h}' stroke='#d50000' stroke-width='2'/>")
        legend = " ".join(f"<tspan fill='{c}'>■ {op}</tspan>" for op, c in _OP_COLOURS.items() if op != "gap")
        parts.append(f"<text x='{left}' y='{height - 16}'>{html.escape(_stamp(lo))}</text>")
        parts.append(f"<text x='{width - 10}' y='{height - 16}' text-anchor='end'>{html.escape(_stamp(hi))}</text>")
        parts.append(f"<text x='{left}' y='{height - 3}'>{legend} <tspan fill='#2e7d32'>▭ restorable</tspan> <tspan fill='#d50000'>| instant</tspan> ({len(events)} events, {top} max per bar)</text>")
        parts.append("</svg>")
        return "".join(parts)

    def _events_table(self) -> str:
        assert self.instant is not None
        rows = self.explorer.around(self.instant, self.around_n)
        head = "".join(f"<th>{c}</th>" for c in ("seq", "time", "Δ s", "op", "namespace", "key", "summary"))
        body = []
        marked = False
        for _, r in rows.iterrows():
            if r["position"] == "after" and not marked:
                body.append(f"<tr class='walkit-marker'><td colspan='7'>▲ at or before {_stamp(self.instant)} — after ▼</td></tr>")
                marked = True
            time = r["time"].to_pydatetime() if r["time"] is not None and r["time"] == r["time"] else None
            cells = (r["seq"], time, f"{r['offset_s']:+.3f}", r["op"], r["namespace"], r["key"], r["summary"])
            body.append(f"<tr class='walkit-{r['position']}'>" + "".join(f"<td>{_esc(c, 100)}</td>" for c in cells) + "</tr>")
        if not marked:
            body.append(f"<tr class='walkit-marker'><td colspan='7'>▲ at or before {_stamp(self.instant)} — nothing after</td></tr>")
        return f"<b>Events around the instant</b><table class='walkit-table'><tr>{head}</tr>{''.join(body)}</table>"

    def _preview(self) -> str:
        assert self.instant is not None
        try:
            then = self.explorer.state(self.instant)
            diff = self.explorer.diff(self.instant)
            now = self.explorer.now()
        except WalkitError as exc:
            return f"<b>Preview</b>: <span style='color:#c62828'>{html.escape(str(exc))}</span>"
        out = [f"<b>Preview at {_stamp(self.instant)}</b> compared with {'the live database' if self.explorer.uri else 'the newest restorable state'}"]
        for ns, frame in diff.items():
            counts = frame["change"].value_counts()
            added, removed, changed = (int(counts.get(c, 0)) for c in ("added", "removed", "changed"))
            out.append(
                f"<div class='walkit-collection' data-namespace='{html.escape(ns)}'><b>{html.escape(ns)}</b>: "
                f"{len(then.get(ns, {}))} document(s) then, {len(now.get(ns, {}))} now — "
                f"<span class='walkit-count-added'>+{added} added</span>, <span class='walkit-count-removed'>−{removed} removed</span>, "
                f"<span class='walkit-count-changed'>~{changed} changed</span> since"
            )
            if len(frame):
                rows = []
                for _, r in frame.head(self.max_rows).iterrows():
                    doc = r["then"] if r["then"] is not None else r["now"]
                    shown = {k: v for k, v in doc.items() if k != "_id"}
                    fields = ", ".join(r["fields"]) if r["change"] == "changed" else ""
                    later = {k: r["now"].get(k) for k in r["fields"]} if r["change"] == "changed" else None
                    rows.append(
                        f"<tr class='walkit-{r['change']}'><td>{r['change']}</td><td>{_esc(r['_id'])}</td><td>{_esc(shown, 120)}</td>"
                        f"<td>{html.escape(fields)}</td><td>{_esc(later, 80) if later is not None else ''}</td></tr>"
                    )
                more = f"<tr><td colspan='5'>… {len(frame) - self.max_rows} more</td></tr>" if len(frame) > self.max_rows else ""
                out.append(
                    "<table class='walkit-table'><tr><th>change</th><th>_id</th><th>document then (now, if added)</th><th>fields</th><th>now</th></tr>"
                    + "".join(rows) + more + "</table>"
                )
            else:
                out.append("<div><i>identical to now</i></div>")
            out.append(self._documents(then.get(ns, {})))
            out.append("</div>")
        if not diff:
            out.append("<div><i>no collections</i></div>")
        return "".join(out)

    def _documents(self, docs: dict[bytes, dict[str, Any]]) -> str:
        """The collection at the instant (its first ``max_rows`` documents), folded away."""
        shown = list(docs.values())[: self.max_rows]
        columns: list[str] = []
        for doc in shown:
            columns += [k for k in doc if k not in columns]
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{_esc(d.get(c), 60)}</td>" for c in columns) + "</tr>" for d in shown)
        first = f" (the first {len(shown)})" if len(docs) > len(shown) else ""
        return (
            f"<details class='walkit-documents'><summary>the {len(docs)} document(s) at the instant{first}</summary>"
            f"<table class='walkit-table'><tr>{head}</tr>{body}</table></details>"
        )

    # -- restoring -----------------------------------------------------------------------------------
    def request_restore(self, name: str | None = None) -> bool:
        """First step: check the name and ask for confirmation (True when the confirm step is shown)."""
        if name is not None:
            self.name.value = name
        name = self.name.value.strip()
        self.pending = None
        self.confirm_box.layout.display = "none"
        if self.instant is None or not self.restore_uri:
            self.result.value = "<span style='color:#c62828'>nothing to restore, or no server to restore into</span>"
            return False
        if not name:
            self.result.value = "<span style='color:#c62828'>name the new database first</span>"
            return False
        self.pending = (self.instant, name)
        self.confirm_text.value = f"Restore the state at <b>{_stamp(self.instant)}</b> into the new database <b>{html.escape(name)}</b> on {html.escape(redact(self.restore_uri))}?"
        self.confirm_box.layout.display = "flex"
        self.progress.value = 0
        self.result.value = ""
        return True

    def cancel_restore(self) -> None:
        self.pending = None
        self.confirm_box.layout.display = "none"
        self.result.value = "restore cancelled"

    def confirm_restore(self) -> RestoreResult | None:
        """Second step: run the restore asked for by :meth:`request_restore` (None if refused or failed: see ``last_error``)."""
        if self.pending is None:
            self.result.value = "<span style='color:#c62828'>press Restore… first</span>"
            return None
        at, name = self.pending
        self.pending = None
        self.confirm_box.layout.display = "none"
        self.last_result, self.last_error = None, None
        self.progress.bar_style = ""

        def progress(step: int, steps: int, message: str) -> None:
            self.progress.max = steps
            self.progress.value = step
            self.result.value = html.escape(message) + " …"

        try:
            result = self.explorer.restore_into(at, self.restore_uri, name, progress=progress)
        except WalkitError as exc:
            self.last_error = str(exc)
            self.progress.bar_style = "danger"
            self.result.value = f"<span style='color:#c62828'>refused: {html.escape(str(exc))}</span>"
            return None
        self.last_result = result
        self.progress.bar_style = "success"
        counts = ", ".join(f"{html.escape(ns)}: {n}" for ns, n in sorted(result.documents.items()))
        self.result.value = (
            f"<span style='color:#2e7d32'>restored the state at {_stamp(at)} into <b>{html.escape(name)}</b>: "
            f"{result.events} event(s) replayed onto snapshot {html.escape(result.plan.snapshot.id)}; {counts or 'no collections'}</span>"
        )
        return result


def explorer_view(explorer: Explorer, *, restore_uri: str | None = None, around: int = 5, max_rows: int = 15) -> Any:
    """The restore explorer as an ipywidgets container (its controller is ``.controller``)."""
    return ExplorerController(explorer, restore_uri=restore_uri, around=around, max_rows=max_rows).widget
