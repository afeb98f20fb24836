"""keep_from names the oldest bundle a restore from the bundle's snapshot needs, even when the
snapshot is older than the last upload (so a provider pruning by it never cuts that restore off)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.upload.conftest import open_world
from walkit.offsite.external import restore_from_external
from walkit.offsite.upload import Policy
from walkit.restore.plan import Target


class Pruned:
    """The provider after it honoured the newest bundle's keep_from."""

    def __init__(self, inner: Any, keep_from: int) -> None:
        self.inner, self.keep_from, self.name = inner, keep_from, inner.name

    def list(self) -> list[Any]:
        return [b for b in self.inner.list() if int(b.metadata.get("index", 0)) >= self.keep_from]

    def download_to(self, ref: str, out: Any) -> int:
        return self.inner.download_to(ref, out)


def test_a_snapshot_older_than_the_last_upload_keeps_the_bundle_with_its_wal(tmp_path: Path) -> None:
    with open_world(tmp_path) as w:
        w.write()
        w.snapshot()
        w.write()
        policy = Policy(snapshot_every_days=2)
        w.upload(policy=policy)
        w.clock.advance(hours=23)
        w.write()
        older = w.snapshot()  # taken before the next (WAL-only) upload ...
        w.write()
        w.clock.advance(hours=1)
        second = w.upload(policy=policy).bundle.metadata()
        assert second["snapshot"] is None
        w.clock.advance(hours=24)
        w.write()
        third = w.upload(policy=policy).bundle.metadata()  # ... and sent with this one
        assert third["snapshot"]["id"] == older.id
        assert third["keep_from"] == second["index"]  # its scan's start lies in the second bundle
        at = w.clock.now()
        result = restore_from_external(Pruned(w.mock, third["keep_from"]), Target("at", at), workdir=tmp_path, to_dump=tmp_path / "dump", progress=False)
        assert [b.index for b in result.offsite.bundles] == [second["index"], third["index"]]
