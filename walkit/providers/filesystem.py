"""FileSystemBackupProvider: the seed's "production" provider, backups in a local folder.

Each upload becomes two files in ``backup_dir``: the blob ``<ref>`` (``<ref>.zst`` when
compressed) and its sidecar ``<ref>.meta.json`` (metadata, size, ``uploaded_at``, sha256).
Both are written to a hidden temporary file, fsynced and renamed, the sidecar last, and
then the folder is fsynced: a backup is listed only once it is complete and durable.
A folder lock (``.lock``, flock) serializes uploads across processes.

Like the seed, it refuses a second upload within ``rate_limit_hours`` (24) of the newest
stored backup (RateLimitError); ``rate_limit_hours=0`` turns that off.  Only stored
backups start the window: a failed upload leaves nothing and does not count.

Guaranteed: a crash during an upload never leaves anything listed; its leftovers are
removed by the next upload.  ``download_to`` checks the bytes against the sha256 taken
at upload and raises if they differ (the bytes already written to ``out`` are then not
to be trusted).  Not guaranteed: pruning is best effort (a file that cannot be removed
stays until the next upload tries again).

The helpers at the bottom (streamed copy with size + sha256, atomic writes, flock,
JSON lines) are shared with the other providers; they are private.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from walkit._fs import fsync_dir
from walkit.clock import Clock, SystemClock
from walkit.errors import ConfigError, ProviderError, ProviderUnavailableError, RateLimitError, StorageLimitError
from walkit.providers.base import CHUNK, ExternalBackupProvider, Limits, StoredBackup, UploadData, check_download, open_upload

__all__ = ["FileSystemBackupProvider"]

SIDECAR = ".meta.json"
FORMAT = "walkit-provider-blob-v1"
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
#: The refs walkit makes (``_new_ref``); only these are ever swept as orphans.
_OWN_REF = re.compile(r"^[a-z]+-\d{8}T\d{12}Z-[0-9a-f]{8}$")


class FileSystemBackupProvider(ExternalBackupProvider):
    """Backups as files in ``backup_dir`` (the seed's ``backupDir``/``compress``/``maxBackups``).

    ``compress=True`` stores blobs zstd-compressed (transparent on download).  walkit
    bundles are already compressed (and encrypted), so this gains little for them; it is
    kept for the seed's option and for other data.  ``max_backups`` (None: keep all):
    after each successful upload the oldest backups beyond the newest ``max_backups`` are
    deleted, chain-aware: a backup whose metadata ``"index"`` (an int, may be absent) is
    >= the newest backup's metadata ``"keep_from"`` is never deleted, and when the newest
    has no ``"keep_from"`` nothing with an ``"index"`` is deleted.  So more than
    ``max_backups`` may remain, but no backup a restore chain still needs is removed.
    """

    name = "filesystem"

    def __init__(
        self,
        backup_dir: str | os.PathLike[str] | None = None,
        compress: bool = True,
        max_backups: int | None = 30,
        *,
        clock: Clock | None = None,
        rate_limit_hours: float = 24,
        backupDir: str | os.PathLike[str] | None = None,  # noqa: N803 - the seed's name
        maxBackups: int | None = None,  # noqa: N803 - the seed's name
    ) -> None:
        backup_dir = _alias("backup_dir", backup_dir, None, "backupDir", backupDir)
        max_backups = _alias("max_backups", max_backups, 30, "maxBackups", maxBackups)
        if backup_dir is None or str(backup_dir) == "":
            raise ConfigError("FileSystemBackupProvider needs backup_dir (the folder to keep backups in)")
        if max_backups is not None and (not _is_int(max_backups) or max_backups < 1):
            raise ConfigError(f"max_backups must be a whole number >= 1 or None (keep all), not {max_backups!r}")
        if not isinstance(rate_limit_hours, (int, float)) or isinstance(rate_limit_hours, bool) or rate_limit_hours < 0:
            raise ConfigError(f"rate_limit_hours must be a number >= 0 (0: no rate limit), not {rate_limit_hours!r}")
        self.backup_dir = Path(backup_dir).expanduser()
        self.compress = bool(compress)
        self.max_backups = max_backups
        self.rate_limit_hours = float(rate_limit_hours)
        self.clock: Clock = clock or SystemClock()

    # -- the interface -----------------------------------------------------------------
    def upload(self, data: UploadData, metadata: dict[str, Any]) -> str:
        """Store ``data``; RateLimitError within ``rate_limit_hours`` of the newest backup."""
        meta = _json_metadata(metadata)
        with ExitStack() as stack:
            src, declared = _open_source(stack, data)
            try:
                self.backup_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ProviderUnavailableError(
                    f"cannot create the backup folder {self.backup_dir} ({exc.strerror or exc}); nothing was stored; "
                    "check the path and its permissions"
                ) from None
            with _exclusive(self.backup_dir / ".lock", f"the backup folder {self.backup_dir}"):
                _sweep(self.backup_dir)
                records = _scan(self.backup_dir)
                now = self.clock.now()
                if self.rate_limit_hours and records:
                    newest = _parse_time(records[-1]["uploaded_at"])
                    allowed = newest + timedelta(hours=self.rate_limit_hours)
                    if now < allowed:
                        raise RateLimitError(
                            f"{self.backup_dir} already has a backup from {newest.isoformat()} (less than "
                            f"{self.rate_limit_hours:g} h ago); the next upload is allowed at {allowed.isoformat()}; "
                            "nothing was stored (rate_limit_hours=0 turns this limit off)"
                        )
                if not self.compress:
                    free = shutil.disk_usage(self.backup_dir).free
                    if declared > free:
                        raise StorageLimitError(
                            f"{declared:,} bytes do not fit in {self.backup_dir} ({free:,} bytes free); nothing was stored; "
                            "free some space or lower max_backups",
                            sent=False,
                        )
                ref = _new_ref("backup", now)
                try:
                    record = _store(self.backup_dir, ref, src, meta, now, compress=self.compress)
                except _SourceError as exc:
                    raise ProviderError(f"could not read the data to upload ({exc}); nothing was stored") from None
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise StorageLimitError(
                            f"{self.backup_dir} ran out of disk space during the upload; nothing was stored; free some space"
                        ) from None
                    raise ProviderError(
                        f"could not write the backup to {self.backup_dir} ({exc.strerror or exc}); nothing was stored; "
                        "check the folder and its permissions"
                    ) from None
                self._prune(record)
                return ref

    def download_to(self, ref: str, out: BinaryIO) -> int:
        """Write the stored bytes of ``ref`` to ``out`` (decompressed, sha256-checked)."""
        record = _find(self.backup_dir, ref, f"the backup folder {self.backup_dir}")
        return _read_blob(self.backup_dir, record, out)

    def list(self) -> list[StoredBackup]:
        """Every complete backup in the folder, oldest first (an absent folder holds none)."""
        return [_to_stored(r) for r in _scan(self.backup_dir)]

    def health_check(self) -> bool:
        """True when the folder exists (or can be created) and is writable."""
        try:
            self.backup_dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False
        return self.backup_dir.is_dir() and os.access(self.backup_dir, os.W_OK | os.X_OK)

    def limits(self) -> Limits:
        """No size limit per upload; ``free_bytes`` is the disk's free space."""
        where = self.backup_dir
        while not where.exists() and where != where.parent:
            where = where.parent
        try:
            return Limits(max_upload_bytes=None, free_bytes=shutil.disk_usage(where).free)
        except OSError:
            return Limits()

    def __repr__(self) -> str:
        return (
            f"FileSystemBackupProvider({str(self.backup_dir)!r}, compress={self.compress}, "
            f"max_backups={self.max_backups}, rate_limit_hours={self.rate_limit_hours:g})"
        )

    # -- pruning -----------------------------------------------------------------------
    def _prune(self, newest: dict[str, Any]) -> None:
        """Delete the oldest backups beyond ``max_backups`` that no chain still needs."""
        if self.max_backups is None:
            return
        records = _scan(self.backup_dir)
        keep_from = newest["metadata"].get("keep_from")
        removed = False
        for record in records[: max(0, len(records) - self.max_backups)]:
            if record["ref"] == newest["ref"] or _chain_protected(record["metadata"].get("index"), keep_from):
                continue
            try:
                (self.backup_dir / (record["ref"] + SIDECAR)).unlink()  # unlisted from here on
                removed = True
                (self.backup_dir / record["file"]).unlink(missing_ok=True)
            except OSError:
                continue  # best effort: the next upload tries again
        if removed:
            fsync_dir(self.backup_dir)


def _chain_protected(index: Any, keep_from: Any) -> bool:
    if not _is_int(index):
        return False
    if not _is_int(keep_from):
        return True
    return index >= keep_from


# -- shared private helpers ------------------------------------------------------------
class _SourceError(Exception):
    """Reading the data being uploaded failed (not the service's fault)."""


class _LimitExceededError(Exception):
    """More bytes arrived than the limit allows."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _alias(name: str, value: Any, default: Any, camel: str, camel_value: Any) -> Any:
    """``value`` or the seed's camelCase spelling of it; ConfigError when both disagree."""
    if camel_value is None:
        return value
    if value != default and value != camel_value:
        raise ConfigError(f"{name}={value!r} and {camel}={camel_value!r} disagree; pass only one of them")
    return camel_value


def _json_metadata(metadata: Any) -> dict[str, Any]:
    """A private copy of ``metadata`` as JSON stores it; ConfigError when it is not JSON-able."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ConfigError(f"backup metadata must be a dict, not {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"backup metadata must be JSON-able (str keys; str, number, bool, None, list, dict values): {exc}"
        ) from None


def _open_source(stack: ExitStack, data: UploadData) -> tuple[BinaryIO, int]:
    """Enter ``open_upload(data)``; ConfigError when the data cannot be opened."""
    try:
        return stack.enter_context(open_upload(data))
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"cannot read the data to upload ({exc}); pass bytes, a seekable binary file or the path of a file; nothing was sent"
        ) from None


def _copy(src: BinaryIO, write: Callable[[bytes], Any], *, limit: int | None = None) -> tuple[int, str]:
    """Copy ``src`` to ``write`` in 1 MiB chunks; return (size, sha256 hex).  Never holds more than a chunk."""
    digest = hashlib.sha256()
    size = 0
    while True:
        try:
            chunk = src.read(CHUNK)
        except Exception as exc:  # any failure of the source (a file, a decompressor) is a read failure
            raise _SourceError(str(exc) or type(exc).__name__) from exc
        if not chunk:
            return size, digest.hexdigest()
        size += len(chunk)
        if limit is not None and size > limit:
            raise _LimitExceededError(size)
        digest.update(chunk)
        write(chunk)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")


def _write_atomic(path: Path, fill: Callable[[BinaryIO], Any]) -> Any:
    """Write ``path`` through a hidden temp file: fill, fsync, rename.  The caller fsyncs the folder."""
    tmp = _temp_name(path)
    try:
        with tmp.open("xb") as f:
            result = fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path``; a torn last line (a crash while appending) is ignored."""
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            if number == len(lines):
                continue
            raise ProviderError(f"{path} line {number} is unreadable ({exc}); move the file away to start a fresh log") from None
        records.append(rec)
    return records


@contextmanager
def _exclusive(lock_path: Path, what: str, timeout: float = 60.0) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_path`` (waiting up to ``timeout`` real seconds)."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ProviderUnavailableError(
            f"cannot open the lock file {lock_path} ({exc.strerror or exc}); nothing was sent"
        ) from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                    raise ProviderUnavailableError(
                        f"{what} is busy: {holder} has held {lock_path} for more than {timeout:g} s; nothing was sent; "
                        "try again later"
                    ) from None
                time.sleep(0.01)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"walkit pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _new_ref(prefix: str, now: datetime) -> str:
    return f"{prefix}-{now.astimezone(UTC):%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(4)}"


def _parse_time(text: str) -> datetime:
    at = datetime.fromisoformat(text)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _store(
    folder: Path,
    ref: str,
    src: BinaryIO,
    metadata: dict[str, Any],
    now: datetime,
    *,
    compress: bool,
    limit: int | None = None,
    call: int | None = None,
) -> dict[str, Any]:
    """Write blob then sidecar of ``ref`` into ``folder`` atomically; return the sidecar record."""
    file = ref + (".zst" if compress else "")

    def fill(f: BinaryIO) -> tuple[int, str]:
        if not compress:
            return _copy(src, f.write, limit=limit)
        import zstandard

        with zstandard.ZstdCompressor(level=3).stream_writer(f, closefd=False) as z:
            return _copy(src, z.write, limit=limit)

    size, sha = _write_atomic(folder / file, fill)
    record: dict[str, Any] = {
        "format": FORMAT,
        "ref": ref,
        "file": file,
        "size": size,
        "stored_bytes": (folder / file).stat().st_size,
        "sha256": sha,
        "compressed": compress,
        "uploaded_at": now.astimezone(UTC).isoformat(),
        "metadata": metadata,
    }
    if call is not None:
        record["call"] = call
    _write_atomic(folder / (ref + SIDECAR), lambda f: f.write(json.dumps(record, indent=1).encode()))
    fsync_dir(folder)
    return record


def _scan(folder: Path) -> list[dict[str, Any]]:
    """The sidecar records of ``folder``, oldest first (hidden and temporary files are skipped)."""
    try:
        paths = [p for p in folder.iterdir() if p.name.endswith(SIDECAR) and not p.name.startswith(".")]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ProviderUnavailableError(
            f"cannot read the folder {folder} ({exc.strerror or exc}); check its permissions"
        ) from None
    records = [r for r in map(_read_sidecar, paths) if r is not None]
    return sorted(records, key=lambda r: (_parse_time(r["uploaded_at"]), r["ref"]))


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    """The record in sidecar ``path`` (None when it does not exist); ProviderError when unreadable."""
    try:
        record = json.loads(path.read_bytes())
        ref = path.name[: -len(SIDECAR)]
        if record.get("ref") != ref:
            raise ValueError(f"it names {record.get('ref')!r}, not {ref!r}")
        _parse_time(record["uploaded_at"])
        record["size"] = int(record["size"])
        if not isinstance(record.setdefault("metadata", {}), dict):
            raise ValueError("its metadata is not an object")
        record.setdefault("file", ref)
        return record
    except FileNotFoundError:
        return None  # never written, or pruned meanwhile
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProviderError(
            f"the backup description {path} is unreadable ({exc}); move it out of the folder (its backup is then ignored)"
        ) from None


def _sweep(folder: Path) -> None:
    """Remove temp files and walkit blobs without a sidecar (only call with the folder lock held).

    Only names walkit itself makes are touched; other files in the folder are left alone.
    """
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError:
        return
    listed = {n[: -len(SIDECAR)] for n in names if n.endswith(SIDECAR) and not n.startswith(".")}
    for name in names:
        temp = name.startswith(".") and ".tmp-" in name
        ref = name.removesuffix(".zst")
        orphan = bool(_OWN_REF.match(ref)) and ref not in listed
        if temp or orphan:
            try:
                (folder / name).unlink()
            except OSError:
                pass


def _find(folder: Path, ref: str, where: str) -> dict[str, Any]:
    """The sidecar record of ``ref``; ProviderError when there is none."""
    if isinstance(ref, str) and _REF.match(ref) and ".." not in ref:
        record = _read_sidecar(folder / (ref + SIDECAR))
        if record is not None:
            return record
    raise ProviderError(f"{where} holds no backup {ref!r}; list() shows the backups it holds")


def _read_blob(folder: Path, record: dict[str, Any], out: BinaryIO) -> int:
    """Copy the stored bytes of ``record`` to ``out``, checking size and sha256."""
    path = folder / record["file"]
    try:
        with path.open("rb") as f:
            if record.get("compressed"):
                import zstandard

                with zstandard.ZstdDecompressor().stream_reader(f, closefd=False) as z:
                    size, sha = _copy(z, out.write)
            else:
                size, sha = _copy(f, out.write)
    except FileNotFoundError:
        raise ProviderError(f"the blob {path} of backup {record['ref']!r} is missing; the backup cannot be restored") from None
    except _SourceError as exc:
        raise ProviderError(f"the blob {path} of backup {record['ref']!r} is damaged ({exc}); it cannot be restored") from None
    except OSError as exc:
        raise ProviderError(f"could not download {record['ref']!r} from {path} ({exc.strerror or exc})") from None
    check_download(f"the blob {path} of backup {record['ref']!r}", record, size, sha)
    return size


def _to_stored(record: dict[str, Any]) -> StoredBackup:
    return StoredBackup(record["ref"], int(record["size"]), _parse_time(record["uploaded_at"]), record["metadata"])
