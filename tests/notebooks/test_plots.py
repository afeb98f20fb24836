"""walkit.lab.plots: each chart on small hand-made DataFrames of simulate()'s documented shape, then on a real small run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

from walkit import plots  # noqa: E402

T0 = pd.Timestamp("2026-01-05T00:00:00Z")
PNG = b"\x89PNG\r\n\x1a\n"


def hours(h: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(hours=h)


def utc(values: list[pd.Timestamp]) -> pd.Series:
    return pd.Series(pd.to_datetime(values, utc=True))


def make_uploads() -> pd.DataFrame:
    """Five daily calls: stored (snapshot), stored, failed (bytes known), stored (snapshot, larger), refused (nothing sent)."""
    rows = [
        (0, True, "stored", 6_000, 1, 1, 10, hours(1), True, None),
        (1, True, "stored", 2_000, 2, 11, 40, hours(25), False, None),
        (2, False, "failed", 2_500, 3, None, None, None, False, "ProviderError: simulated failure"),
        (3, True, "stored", 9_000, 3, 41, 90, hours(73), True, None),
        (4, False, "refused", 0, None, None, None, None, False, "QuotaExceededError: today's call is spent"),
    ]
    df = pd.DataFrame(rows, columns=["day", "ok", "outcome", "bytes", "index", "first_seq", "last_seq", "covers_to", "snapshot", "error"])
    df.insert(0, "time", utc([hours(2 + 24 * d) for d in df["day"]]))
    df["covers_to"] = pd.to_datetime(df["covers_to"], utc=True)
    for col in ("index", "first_seq", "last_seq"):
        df[col] = df[col].astype("Int64")
    return df


def make_recovery(days: int = 3, every_minutes: int = 60) -> pd.DataFrame:
    times = pd.date_range(T0, periods=days * 24 * 60 // every_minutes + 1, freq=f"{every_minutes}min", tz="UTC")
    h = (times - T0) / pd.Timedelta(hours=1)
    since_upload = [(x - 2) % 24 if x >= 2 else x for x in h]
    return pd.DataFrame(
        {
            "time": times,
            "walkit_db_lost": [0.2 / 3600] * len(times),
            "walkit_site_lost": since_upload,
            "daily_dump_site_lost": [v + 1 for v in since_upload],
            "snapshots_db_lost": [x % 6 for x in h],
        }
    )


def make_windows(bundles: int = 3) -> pd.DataFrame:
    rows = [("local WAL", "local snapshots + WAL", hours(0), hours(72))]
    rows += [("snapshot", f"snap-{i}", hours(6 * i), hours(6 * i)) for i in range(12)]
    rows += [("bundle", f"bundle {i + 1}", hours(24 * i), hours(24 * i + 23)) for i in range(bundles)]
    df = pd.DataFrame(rows, columns=["kind", "label", "start", "end"])
    for col in ("start", "end"):
        df[col] = pd.to_datetime(df[col], utc=True)
    return df


def make_events(n: int = 500) -> pd.DataFrame:
    times = utc([hours(72 * i / n) for i in range(n)])
    ops = ["insert", "update", "delete"]
    return pd.DataFrame({"time": times, "op": [ops[i % 3] for i in range(n)], "collection": "orders", "key": range(n)})


def make_policies() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "policy": ["snapshot every 1 day(s)", "snapshot every 7 day(s)", "snapshot in the first bundle only"],
            "snapshot_every_days": [1.0, 7.0, 0.0],
            "bundles": [14, 14, 14],
            "total_bytes": [430_000, 325_000, 316_000],
            "mean_bytes": [30_700.0, 23_200.0, 22_500.0],
            "max_bytes": [34_800, 33_300, 24_600],
            "worst_chain": [1, 7, 14],
            "mean_chain": [1.0, 4.0, 7.5],
        }
    )


def lines(ax) -> list:  # type: ignore[no-untyped-def]
    return list(ax.get_lines())


def test_importing_plots_does_not_import_matplotlib() -> None:
    code = "import sys, walkit.lab.plots; assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_quota_timeline() -> None:
    uploads = make_uploads()
    before = uploads.copy()
    fig = plots.quota_timeline(uploads)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert len(ax.patches) == len(uploads)  # one bar per daily call
    colours = {tuple(p.get_facecolor()) for p in ax.patches}
    assert len(colours) == 3  # stored, failed, refused
    # the refused call (0 bytes) gets an x on the axis; the two snapshot bundles get stars
    assert [len(c.get_offsets()) for c in ax.collections] == [1, 2]
    assert "one call per day" in ax.get_title().lower()
    assert "5 calls" in ax.get_title() and "1 failed" in ax.get_title()
    assert ax.get_legend() is not None
    pd.testing.assert_frame_equal(uploads, before)  # inputs untouched


def test_quota_timeline_without_snapshots_or_misses() -> None:
    uploads = make_uploads().iloc[[1]]
    fig = plots.quota_timeline(uploads)
    (ax,) = fig.axes
    assert len(ax.patches) == 1 and not ax.collections


def test_recovery_points_one_panel_per_disaster() -> None:
    recovery = make_recovery()
    fig = plots.recovery_points(recovery)
    db, site = fig.axes
    assert "database lost" in db.get_title(loc="left") and "whole site" in site.get_title(loc="left")
    assert [line.get_label() for line in lines(db)] == [plots.RPO_COLUMNS["walkit_db_lost"], plots.RPO_COLUMNS["snapshots_db_lost"]]
    assert len(lines(site)) == 2
    styles = {line.get_label(): line.get_linestyle() for ax in fig.axes for line in lines(ax)}
    assert styles[plots.RPO_COLUMNS["walkit_site_lost"]] == "-"
    assert styles[plots.RPO_COLUMNS["daily_dump_site_lost"]] == "--"  # baselines dashed
    assert styles[plots.RPO_COLUMNS["snapshots_db_lost"]] == "--"
    assert len(lines(site)[0].get_xdata()) == len(recovery)


def test_recovery_points_columns_and_failed_calls() -> None:
    fig = plots.recovery_points(make_recovery(), columns=["walkit_site_lost", "daily_dump_site_lost"], uploads=make_uploads())
    (ax,) = fig.axes
    assert len(lines(ax)) == 3  # two series and the failed-call markers
    assert len(lines(ax)[-1].get_xdata()) == 2  # the failed and the refused call
    with pytest.raises(KeyError, match="no column"):
        plots.recovery_points(make_recovery(), columns=["nope"])


def test_rpo_cdf() -> None:
    recovery = make_recovery()
    fig = plots.rpo_cdf(recovery)
    (ax,) = fig.axes
    curves = [line for line in lines(ax) if line.get_label() != "24 h"]
    assert len(curves) == 2  # walkit and the daily dump: the off-site columns only
    assert len(lines(ax)) == 3  # and the 24 h reference
    for line in curves:
        y = line.get_ydata()
        assert y[0] == 0 and y[-1] == pytest.approx(1.0) and all(a <= b for a, b in zip(y, y[1:], strict=False))
        assert len(y) == len(recovery) + 1
    assert "worst 24.0 h" in curves[1].get_label()


def test_windows_timeline() -> None:
    windows = make_windows(bundles=3)
    fig = plots.windows_timeline(windows)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["local WAL", "local snapshots", "bundle 1", "bundle 2", "bundle 3"]
    assert len(ax.collections) == 5  # one broken_barh per row
    assert len(ax.collections[1].get_paths()) == 12  # each snapshot instant is drawn


def test_wal_growth() -> None:
    events, uploads = make_events(), make_uploads()
    fig = plots.wal_growth(events, uploads)
    left, right = fig.axes
    assert len(lines(left)) == 1 and len(lines(right)) == 1
    captured = lines(left)[0].get_ydata()
    assert captured[-1] == len(events)
    stored = lines(right)[0].get_ydata()
    assert list(stored) == [6_000, 8_000, 17_000]  # only successful calls, cumulative


def test_wal_growth_thins_many_events() -> None:
    fig = plots.wal_growth(make_events(20_000), make_uploads())
    (line,) = lines(fig.axes[0])
    assert len(line.get_xdata()) <= 4_100 and line.get_ydata()[-1] == 20_000


def test_policy_comparison() -> None:
    df = make_policies()
    fig = plots.policy_comparison(df)
    left, right = fig.axes
    assert len(left.patches) == 2 * len(df)  # mean and largest bundle per policy
    assert len(right.patches) == len(df)  # the worst chain per policy
    assert len(lines(right)) == 1  # mean chain markers
    assert [p.get_height() for p in right.patches] == [1, 7, 14]
    assert "smaller daily bundles" in fig.get_suptitle()


@pytest.mark.parametrize(
    "draw",
    [
        lambda: plots.quota_timeline(make_uploads().iloc[0:0]),
        lambda: plots.recovery_points(make_recovery().iloc[0:0]),
        lambda: plots.rpo_cdf(make_recovery().iloc[0:0]),
        lambda: plots.windows_timeline(make_windows().iloc[0:0]),
        lambda: plots.wal_growth(make_events().iloc[0:0], make_uploads().iloc[0:0]),
        lambda: plots.policy_comparison(make_policies().iloc[0:0]),
    ],
    ids=["quota", "recovery", "cdf", "windows", "growth", "policies"],
)
def test_empty_frames_give_an_empty_chart(draw, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fig = draw()
    assert isinstance(fig, Figure)
    assert any("no " in t.get_text() for ax in fig.axes for t in ax.texts)
    plots.save(fig, tmp_path / "empty.png")


def test_save_writes_a_png_creating_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "build" / "charts" / "quota.png"
    written = plots.save(plots.quota_timeline(make_uploads()), out)
    assert written == str(out)
    data = out.read_bytes()
    assert data.startswith(PNG) and len(data) > 1_000


# -- a real run ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from walkit.lab.simulate import simulate
    return simulate(days=3, writes_per_day=50, failure_rate=0.0, seed=0, workdir=tmp_path_factory.mktemp("sim"))


def test_every_chart_on_a_real_simulation(result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    figures = {
        "quota": plots.quota_timeline(result.uploads),
        "recovery": plots.recovery_points(result.recovery, uploads=result.uploads),
        "cdf": plots.rpo_cdf(result.recovery),
        "windows": plots.windows_timeline(result.windows),
        "growth": plots.wal_growth(result.events, result.uploads),
    }
    assert len(figures["quota"].axes[0].patches) == len(result.uploads) == 3
    assert len(figures["recovery"].axes) == 2
    assert len(figures["growth"].axes[0].get_lines()[0].get_ydata()) >= 2
    bundles = int((result.windows["kind"] == "bundle").sum())
    assert len(figures["windows"].axes[0].get_yticklabels()) == bundles + 2
    for name, fig in figures.items():
        path = plots.save(fig, tmp_path / f"{name}.png")
        assert Path(path).read_bytes().startswith(PNG)
