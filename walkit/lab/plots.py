"""Charts of a simulation: the daily calls, recovery points, restorable windows, policies.

Every function takes DataFrames of :func:`walkit.lab.simulate.simulate`'s result (or of
:func:`walkit.lab.simulate.compare_policies`) and returns a :class:`matplotlib.figure.Figure`
built with the object API (no pyplot, so nothing is shown or kept open behind your back);
:func:`save` writes one as a PNG.  In a notebook, ``%matplotlib inline`` once makes a
returned figure display.  matplotlib is imported on first use: ``import walkit.lab.plots``
works without it.

Times are drawn in UTC.  Guaranteed: the functions do not modify their inputs, and
accept empty DataFrames of the documented columns (an empty chart saying so).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "quota_timeline",
    "recovery_points",
    "rpo_cdf",
    "windows_timeline",
    "wal_growth",
    "policy_comparison",
    "save",
    "RPO_COLUMNS",
    "OUTCOME_COLOURS",
]

#: The recovery-point columns of ``SimulationResult.recovery`` and how the charts name them.
RPO_COLUMNS: dict[str, str] = {
    "walkit_db_lost": "walkit: database lost, disk intact (local WAL)",
    "snapshots_db_lost": "baseline: local snapshots, no WAL",
    "walkit_site_lost": "walkit: whole site lost (off-site bundles)",
    "daily_dump_site_lost": "baseline: one daily full dump, no WAL",
}

#: Bar colours of the upload outcomes.
OUTCOME_COLOURS: dict[str, str] = {
    "stored": "#2e7d32",
    "failed": "#c62828",
    "skipped": "#9e9e9e",
    "refused": "#ef6c00",
}

_DISASTERS = {
    "_db_lost": "database lost, local disk intact",
    "_site_lost": "whole site lost: only the off-site service is left",
}
_BASELINE_COLOURS = ["#6d4c41", "#8e24aa", "#f9a825", "#00838f"]


# -- helpers -----------------------------------------------------------------------------
def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _times(values: Any) -> Any:
    """Naive UTC ``datetime64[ns]`` values (what matplotlib draws fastest) of a column of times."""
    import pandas as pd

    t = pd.to_datetime(pd.Series(values), utc=True)
    return t.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")


def _time_axis(ax: Axes) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("time (UTC)")


def _unit(n: float) -> float:
    """The power of 1024 that writes ``n`` bytes with 1 to 3 digits before the point."""
    unit = 1.0
    while abs(n) >= 1024 * unit and unit < 1024**3:
        unit *= 1024
    return unit


def _human_bytes(n: float, _pos: Any = None) -> str:
    n = float(n)
    unit = _unit(n)
    name = {1.0: "B", 1024.0: "KiB", 1024.0**2: "MiB"}.get(unit, "GiB")
    return f"{n:.0f} B" if unit == 1 else f"{n / unit:.3g} {name}"


def _bytes_axis(axis: Any) -> None:
    """Ticks at round numbers of KiB/MiB/GiB, labelled so."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    class _ByteLocator(MaxNLocator):
        def tick_values(self, vmin: float, vmax: float) -> Any:
            unit = _unit(max(abs(vmin), abs(vmax)))
            return np.asarray(super().tick_values(vmin / unit, vmax / unit)) * unit

    axis.set_major_locator(_ByteLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(FuncFormatter(_human_bytes))


def _duration(hours: float) -> str:
    seconds = hours * 3600
    if seconds < 60:
        return f"{seconds:.2g} s"
    return f"{seconds / 60:.3g} min" if seconds < 3600 else f"{hours:.3g} h"


def _empty(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes, color="#757575")


def _label(column: str) -> str:
    return RPO_COLUMNS.get(column, column.replace("_", " "))


def _disaster(column: str) -> str:
    for suffix, name in _DISASTERS.items():
        if column.endswith(suffix):
            return name
    return "other"


def _rpo_columns(recovery: pd.DataFrame, columns: Sequence[str] | None, suffix: str = "") -> list[str]:
    if columns is None:
        known = [c for c in RPO_COLUMNS if c in recovery.columns and c.endswith(suffix)]
        others = [
            c
            for c in recovery.columns
            if c != "time" and c not in RPO_COLUMNS and c.endswith(suffix or "_lost") and _numeric(recovery[c])
        ]
        return known + others
    missing = [c for c in columns if c not in recovery.columns]
    if missing:
        raise KeyError(f"recovery has no column(s) {', '.join(missing)}; it has {', '.join(map(str, recovery.columns))}")
    return list(columns)


def _numeric(series: pd.Series) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series))


def _styles(columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """walkit solid, baselines dashed, one colour each."""
    styles: dict[str, dict[str, Any]] = {}
    spare = iter(_BASELINE_COLOURS * 4)
    for c in columns:
        if c.startswith("walkit"):
            styles[c] = {"color": "#1565c0", "linestyle": "-", "linewidth": 2.2}
        else:
            styles[c] = {"color": next(spare), "linestyle": "--", "linewidth": 1.2}
    return styles


# -- the charts --------------------------------------------------------------------------
def quota_timeline(uploads: pd.DataFrame) -> Figure:
    """One bar per daily call: height = bundle bytes, colour = outcome, a star on bundles carrying a snapshot.

    A failed call with no bytes still gets a marker on the axis.  The title counts the calls
    and how many failed.
    """
    import numpy as np
    import pandas as pd

    fig = _figure(10, 3.8)
    ax = fig.add_subplot()
    n = len(uploads)
    if n == 0:
        _empty(ax, "upload calls")
        ax.set_title("One call per day: no calls yet")
        return fig
    times = _times(uploads["time"])
    size = pd.to_numeric(uploads["bytes"], errors="coerce").fillna(0).to_numpy(dtype=float)
    outcome = uploads["outcome"].astype(str).to_numpy() if "outcome" in uploads else np.where(uploads["ok"], "stored", "failed")
    colours = [OUTCOME_COLOURS.get(o, "#607d8b") for o in outcome]
    ordered = np.sort(times)
    gaps = np.diff(ordered).astype("timedelta64[s]").astype(float) if n > 1 else np.array([86400.0])
    width_s = 0.6 * float(np.median(gaps)) if len(gaps) and np.median(gaps) > 0 else 0.6 * 86400.0
    ax.bar(times, size, width=np.timedelta64(int(width_s), "s"), color=colours, edgecolor="none", zorder=2)
    top = float(size.max()) if size.max() > 0 else 1.0
    empty = size <= 0
    if empty.any():  # calls that sent nothing countable (failed before bytes were known, skipped)
        ax.scatter(times[empty], np.zeros(int(empty.sum())), marker="x", s=40, c=np.array(colours, dtype=object)[empty], zorder=3)
    if "snapshot" in uploads:
        snap = uploads["snapshot"].fillna(False).astype(bool).to_numpy()
        if snap.any():
            ax.scatter(
                times[snap], size[snap] + 0.04 * top, marker="*", s=70, color="#f9a825", edgecolor="#5d4037",
                linewidths=0.5, zorder=4, label="bundle carries a snapshot",
            )
    from matplotlib.patches import Patch

    seen = [o for o in OUTCOME_COLOURS if o in set(outcome)] + sorted(set(outcome) - set(OUTCOME_COLOURS))
    handles: list[Any] = [Patch(color=OUTCOME_COLOURS.get(o, "#607d8b"), label=o) for o in seen]
    handles += ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", fontsize="small", ncols=min(len(handles), 5), frameon=False)
    ax.set_ylim(0, top * 1.3)
    _bytes_axis(ax.yaxis)
    ax.set_ylabel("bundle size")
    _time_axis(ax)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    failed = int((outcome == "failed").sum())
    stored = int((outcome == "stored").sum())
    ax.set_title(f"One call per day: {n} calls, {stored} stored, {failed} failed (a failed day's changes ride in the next bundle)")
    return fig


def recovery_points(recovery: pd.DataFrame, columns: Sequence[str] | None = None, *, uploads: pd.DataFrame | None = None) -> Figure:
    """The recovery point over time: hours of changes lost if that disaster struck at that instant.

    One panel per disaster (``*_db_lost``, ``*_site_lost``), one line per column: walkit solid,
    baselines dashed.  Whole-site loss is a sawtooth (each successful upload resets it; a failed
    day makes a taller tooth).  With ``uploads``, failed calls are marked on the site-loss panel.
    """
    import matplotlib.dates as mdates

    cols = _rpo_columns(recovery, columns)
    groups: dict[str, list[str]] = {}
    for c in cols:
        groups.setdefault(_disaster(c), []).append(c)
    if not groups:
        groups = {"recovery point": []}
    fig = _figure(10, 3.2 * len(groups))
    axes = fig.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0]
    styles = _styles(cols)
    times = _times(recovery["time"]) if len(recovery) else None
    for ax, (disaster, group) in zip(axes, groups.items(), strict=True):
        ax.set_title(disaster, loc="left", fontsize="medium")
        ax.set_ylabel("data lost (hours)")
        ax.grid(alpha=0.3)
        if times is None or not group:
            _empty(ax, "recovery samples")
            continue
        top = max(float(recovery[c].max()) for c in group)
        for c in group:
            values = recovery[c].astype(float).to_numpy()
            ax.plot(times, values, label=_label(c), drawstyle="steps-post", zorder=2 if c.startswith("walkit") else 3, **styles[c])
            worst = float(values.max()) if len(values) else 0.0
            if top > 0 and worst < 0.02 * top:  # a line hugging zero: say what it is
                ax.annotate(
                    f"{_label(c).split(':')[0]}: at most {_duration(worst)}",
                    (mdates.date2num(times[len(times) // 2]), worst),
                    xytext=(mdates.date2num(times[len(times) // 2]), 0.2),
                    textcoords=("data", "axes fraction"),
                    ha="center", va="bottom", color=styles[c]["color"], fontsize="small", zorder=5,
                    bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": styles[c]["color"]},
                    arrowprops={"arrowstyle": "->", "color": styles[c]["color"]},
                )
        if uploads is not None and len(uploads) and disaster == _DISASTERS["_site_lost"]:
            failed = uploads[~uploads["ok"].astype(bool)]
            if len(failed):
                ft = _times(failed["time"])
                ax.plot(ft, [0.0] * len(ft), linestyle="none", marker="^", color=OUTCOME_COLOURS["failed"], label="failed daily call")
        ax.set_ylim(0, max(top, 1e-6) * 1.3)  # room for the legend above the teeth
        ax.legend(loc="upper left", fontsize="small", framealpha=0.9, ncols=2)
    _time_axis(axes[-1])
    fig.suptitle("Recovery point: what a disaster at that instant would lose")
    return fig


def rpo_cdf(recovery: pd.DataFrame, columns: Sequence[str] | None = None) -> Figure:
    """The CDF of the off-site recovery point (``*_site_lost``) over every sampled instant.

    One step line per column (walkit solid, baselines dashed), and a dotted line at 24 h.
    Read it as: "at a random instant, the share of disasters losing at most x hours".
    """
    import numpy as np

    cols = _rpo_columns(recovery, columns, suffix="_site_lost")
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    styles = _styles(cols)
    drawn = 0
    for c in cols:
        values = np.sort(recovery[c].astype(float).dropna().to_numpy())
        if not len(values):
            continue
        share = np.arange(1, len(values) + 1) / len(values)
        ax.step(np.r_[0.0, values], np.r_[0.0, share], where="post", label=f"{_label(c)}; worst {values[-1]:.1f} h", **styles[c])
        drawn += 1
    if not drawn:
        _empty(ax, "recovery samples")
    ax.axvline(24, color="#757575", linestyle=":", linewidth=1, label="24 h")
    ax.set_xlim(left=0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("off-site recovery point: data lost if the whole site is lost (hours)")
    ax.set_ylabel("share of instants")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small", frameon=False)
    ax.set_title("How much a whole-site disaster loses (CDF)")
    return fig


def windows_timeline(windows: pd.DataFrame) -> Figure:
    """Restorable windows as horizontal bars: a row for the local WAL, one for the snapshots,
    and one per bundle (each bundle's coverage), newest at the bottom."""
    import matplotlib.dates as mdates
    import numpy as np

    kinds = {"local WAL": "#1565c0", "snapshot": "#f9a825", "bundle": "#2e7d32"}
    rows: list[tuple[str, str, Any]] = []  # (row label, kind, frame rows)
    if len(windows):
        for kind in list(kinds) + sorted(set(windows["kind"]) - set(kinds)):
            part = windows[windows["kind"] == kind]
            if not len(part):
                continue
            if kind == "bundle":
                part = part.sort_values("start", kind="stable")
                rows += [(str(label), kind, part.iloc[[i]]) for i, label in enumerate(part["label"])]
            else:
                rows.append(("local snapshots" if kind == "snapshot" else kind, kind, part))
    fig = _figure(10, max(2.5, 1.2 + 0.28 * len(rows)))
    ax = fig.add_subplot()
    if not rows:
        _empty(ax, "restorable windows")
        ax.set_title("Restorable windows")
        return fig
    starts, ends = _times(windows["start"]), _times(windows["end"])
    span = max(float((ends.max() - starts.min()) / np.timedelta64(1, "s")), 1.0)
    least = np.timedelta64(max(int(span * 0.002), 1), "s")  # an instant (a snapshot) still shows
    for y, (_row, kind, part) in enumerate(rows):
        s, e = _times(part["start"]), _times(part["end"])
        x0, x1 = mdates.date2num(s), mdates.date2num(s + np.maximum(e - s, least))
        xs = list(zip(x0, x1 - x0, strict=True))
        ax.broken_barh(xs, (y - 0.35, 0.7), facecolors=kinds.get(kind, "#607d8b"), edgecolor="none")
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize="small" if len(rows) < 20 else "x-small")
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    _time_axis(ax)
    ax.set_title("Restorable windows: local WAL, local snapshots, and each bundle's coverage off-site", loc="left", fontsize="medium")
    return fig


def wal_growth(events: pd.DataFrame, uploads: pd.DataFrame) -> Figure:
    """Cumulative changes captured (left axis) and cumulative bytes stored off-site (right axis, steps at each successful call)."""
    import numpy as np
    import pandas as pd

    fig = _figure(10, 3.8)
    ax = fig.add_subplot()
    right = ax.twinx()
    if len(events):
        t = np.sort(_times(events["time"]))
        count = np.arange(1, len(t) + 1)
        step = max(1, len(t) // 4000)  # enough points for the eye, fast for 300,000 events
        keep = np.unique(np.r_[np.arange(0, len(t), step), len(t) - 1])
        ax.plot(t[keep], count[keep], color="#1565c0", linewidth=1.6, label="changes captured (local WAL)")
    else:
        _empty(ax, "events")
    ok = uploads[uploads["ok"].astype(bool)] if len(uploads) else uploads
    if len(ok):
        ok = ok.sort_values("time", kind="stable")
        sent = np.cumsum(pd.to_numeric(ok["bytes"], errors="coerce").fillna(0).to_numpy(dtype=float))
        right.plot(_times(ok["time"]), sent, drawstyle="steps-post", color="#2e7d32", marker="o", markersize=3,
                   linewidth=1.4, label="bytes stored off-site")
    else:
        right.plot([], [], color="#2e7d32", label="bytes stored off-site")
    ax.set_ylabel("changes captured")
    right.set_ylabel("stored off-site")
    _bytes_axis(right.yaxis)
    ax.set_ylim(bottom=0)
    right.set_ylim(bottom=0)
    _time_axis(ax)
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", fontsize="small", frameon=False)
    ax.set_title("Every change is captured at once; it goes off-site in one call a day")
    return fig


def policy_comparison(df: pd.DataFrame) -> Figure:
    """The contents-policy trade-off: bundle bytes per policy (left) against the restore chain
    a restore from off-site needs (right, worst case bars and mean markers)."""
    import numpy as np

    fig = _figure(10, 3.8)
    left, right = fig.subplots(1, 2)
    if not len(df):
        _empty(left, "policies")
        _empty(right, "policies")
        return fig
    import textwrap

    names = [textwrap.fill(str(p), 22) for p in df["policy"]]
    x = np.arange(len(names))
    w = 0.38
    left.bar(x - w / 2, df["mean_bytes"].astype(float), w, color="#1565c0", label="mean bundle")
    left.bar(x + w / 2, df["max_bytes"].astype(float), w, color="#90caf9", label="largest bundle")
    _bytes_axis(left.yaxis)
    left.set_ylabel("bytes per daily call")
    left.set_title("what each daily call uploads", fontsize="medium")
    right.bar(x, df["worst_chain"].astype(float), 0.6, color="#ef6c00", label="worst case")
    right.plot(x, df["mean_chain"].astype(float), linestyle="none", marker="D", color="#4e342e", label="mean")
    right.set_ylabel("bundles a restore downloads")
    right.set_title("what a restore from off-site needs", fontsize="medium")
    right.yaxis.get_major_locator().set_params(integer=True)
    totals = [f"{name}\n{int(b)} bundles, {_human_bytes(t)}" for name, b, t in zip(names, df["bundles"], df["total_bytes"], strict=True)]
    for ax in (left, right):
        ax.set_xticks(x, totals if ax is left else names, fontsize="small")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.legend(fontsize="small", frameon=False)
    fig.suptitle("Contents policy: smaller daily bundles cost longer restore chains")
    return fig


def save(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 110) -> str:
    """Write ``fig`` as a PNG at ``path`` (creating its folder); returns the path written."""
    out = os.fspath(path)
    folder = os.path.dirname(out)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    return out
