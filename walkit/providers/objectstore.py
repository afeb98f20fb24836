"""ObjectStoreBackupProvider: backups in an object store through fsspec (S3, GCS, Azure, local, memory).

The seed's "Custom Provider" for cloud storage.  Each upload is two objects under the
URL: the blob ``<url>/<name>`` and its description ``<url>/<name>.meta.json`` (metadata,
size, ``uploaded_at``, sha256).  The blob is written first, streamed in 1 MiB chunks
through fsspec's ``open(..., "wb")``, and the description last, so a listing only shows
uploads that completed: a half-done upload is never listed.

``ref`` is the object name: ``metadata["name"]`` when given (no ``/``, ``\\``, ``..``
or control characters, else ConfigError), otherwise a timestamp and a random suffix.
It has no rate limit of its own: walkit's quota ledger is what keeps to one call a day.

Errors: a failure before any byte is written (the first request, which checks that the
name is free, cannot reach the store) is :class:`ProviderUnavailableError` (``sent``
False); any later failure is :class:`ProviderError` with ``sent`` True (the store may
hold part of it, unlisted; the leftover blob is removed when possible).  Guaranteed:
``download_to`` checks size and sha256 against the description and raises if they
differ.  Not guaranteed: with ``file://`` the blob and description are fsynced, other
stores are as durable as they say they are once a write returns.
"""

from __future__ import annotations

import json
import posixpath
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO

from walkit._fs import fsync_dir
from walkit.clock import Clock, SystemClock
from walkit.errors import ConfigError, ProviderError, ProviderUnavailableError, WalkitError
from walkit.providers.base import ExternalBackupProvider, StoredBackup, UploadData, check_download
from walkit.providers.filesystem import (
    FORMAT,
    SIDECAR,
    _copy,
    _json_metadata,
    _new_ref,
    _open_source,
    _parse_time,
    _SourceError,
    _to_stored,
    _write_atomic,
)

__all__ = ["ObjectStoreBackupProvider"]

_INSTALL = "pip install 'walkit[objectstore]' (plus gcsfs for gs://, adlfs for az://)"


class ObjectStoreBackupProvider(ExternalBackupProvider):
    """Backups under an fsspec URL: ``s3://bucket/prefix``, ``gs://``, ``az://``, ``file:///path``, ``memory://``.

    ``storage_options`` go to fsspec unchanged (for s3fs e.g. ``key``, ``secret``,
    ``client_kwargs={"endpoint_url": ...}``); they never appear in messages.
    ``block_size`` is the write buffer fsspec uploads in (for S3: the multipart part size).
    """

    name = "objectstore"

    def __init__(
        self,
        url: str,
        *,
        storage_options: dict[str, Any] | None = None,
        clock: Clock | None = None,
        block_size: int = 8 * 1024 * 1024,
    ) -> None:
        if not isinstance(url, str) or "://" not in url:
            raise ConfigError(f"the object store URL must look like s3://bucket/prefix or file:///path, not {url!r}")
        if storage_options is not None and not isinstance(storage_options, dict):
            raise ConfigError(f"storage_options must be a dict, not {type(storage_options).__name__}")
        try:
            import fsspec
        except ImportError:
            raise ConfigError(f"the object-store provider needs fsspec: {_INSTALL}") from None
        try:
            self._fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        except ImportError as exc:
            raise ConfigError(f"{url}: {exc}; {_INSTALL}") from None
        except Exception as exc:  # fsspec and its back ends raise many kinds for bad URLs/options
            raise ConfigError(f"cannot use the object store URL {url!r} with these storage_options ({_describe(exc)})") from None
        self.url = url.rstrip("/")
        self._root = root.rstrip("/")
        self._local = "file" in _protocols(self._fs)
        self.block_size = block_size
        self.clock: Clock = clock or SystemClock()

    # -- the interface -----------------------------------------------------------------
    def upload(self, data: UploadData, metadata: dict[str, Any]) -> str:
        """Stream ``data`` to ``<url>/<name>``, then write ``<name>.meta.json``; return ``name``."""
        meta = _json_metadata(metadata)
        name = _object_name(meta["name"]) if "name" in meta else _new_ref("backup", self.clock.now())
        blob, side = self._path(name), self._path(name + SIDECAR)
        with ExitStack() as stack:
            src, _declared = _open_source(stack, data)
            try:
                if self._local:
                    self._fs.makedirs(self._root, exist_ok=True)
                taken = self._fs.exists(side)
            except Exception as exc:
                raise ProviderUnavailableError(
                    f"could not reach the object store at {self.url} ({_describe(exc)}); nothing was uploaded; "
                    "check the endpoint, the network and the credentials"
                ) from None
            if taken:
                raise ProviderError(
                    f"{self.url} already holds a backup named {name!r}; nothing was uploaded; give the upload another name",
                    sent=False,
                )
            now = self.clock.now()
            f = None
            try:
                f = self._fs.open(blob, "wb", block_size=self.block_size)
                size, sha = _copy(src, f.write)
                f.close()
                if self._local:
                    fsync_dir(Path(blob))  # a file: its data
                record = {
                    "format": FORMAT,
                    "ref": name,
                    "file": name,
                    "size": size,
                    "sha256": sha,
                    "uploaded_at": now.isoformat(),
                    "metadata": meta,
                }
                self._write_sidecar(side, json.dumps(record, indent=1).encode())
            except _SourceError as exc:
                self._abandon(f, blob)
                raise ProviderError(f"could not read the data to upload ({exc}); nothing was listed at {self.url}") from None
            except WalkitError:
                self._abandon(f, blob)
                raise
            except Exception as exc:
                self._abandon(f, blob)
                raise ProviderError(
                    f"the upload of {name!r} to {self.url} failed ({_describe(exc)}); it is not listed (its description "
                    "is written last); check the store and try again"
                ) from None
            return name

    def download_to(self, ref: str, out: BinaryIO) -> int:
        """Write the stored bytes of ``ref`` to ``out``, checking size and sha256."""
        record = self._describe_ref(ref)
        try:
            with self._fs.open(self._path(ref), "rb", block_size=self.block_size) as f:
                size, sha = _copy(f, out.write)
        except FileNotFoundError:
            raise ProviderError(f"the blob of backup {ref!r} is missing from {self.url}; it cannot be restored") from None
        except WalkitError:
            raise
        except _SourceError as exc:
            raise ProviderError(f"could not download {ref!r} from {self.url} ({exc}); try again") from None
        except Exception as exc:
            raise ProviderError(f"could not download {ref!r} from {self.url} ({_describe(exc)}); try again") from None
        check_download(f"the blob of backup {ref!r} at {self.url}", record, size, sha)
        return size

    def list(self) -> list[StoredBackup]:
        """Every upload whose description exists, oldest first (ProviderError when the bucket does not exist)."""
        try:
            self._fs.invalidate_cache(self._root)
            paths = self._fs.ls(self._root or "/", detail=False)
        except FileNotFoundError:
            if self._exists_up_to_bucket():
                return []  # nothing uploaded yet
            raise ProviderError(f"{self.url} does not exist (no such bucket or folder); check the URL") from None
        except Exception as exc:
            raise ProviderUnavailableError(f"could not list the object store at {self.url} ({_describe(exc)})") from None
        sides = sorted(p for p in paths if posixpath.basename(p.rstrip("/")).endswith(SIDECAR))
        if not sides:
            return []
        try:
            contents = self._fs.cat(sides)
        except Exception as exc:
            raise ProviderUnavailableError(f"could not read the backup descriptions at {self.url} ({_describe(exc)})") from None
        records = [self._parse(posixpath.basename(p)[: -len(SIDECAR)], contents[p]) for p in sides if p in contents]
        records.sort(key=lambda r: (_parse_time(r["uploaded_at"]), r["ref"]))
        return [_to_stored(r) for r in records]

    def health_check(self) -> bool:
        """True when the store answers a listing of the URL (or of its nearest existing parent below the bucket)."""
        try:
            return self._exists_up_to_bucket()
        except Exception:
            return False

    def _exists_up_to_bucket(self) -> bool:
        """Whether the URL or a parent of it (the bucket at most) exists; raises when the store does not answer."""
        path = self._root or "/"
        while True:
            try:
                self._fs.invalidate_cache(path)
                self._fs.ls(path, detail=False)
                return True
            except FileNotFoundError:
                parent = posixpath.dirname(path.rstrip("/"))
                if not parent or parent == path:
                    return False
                path = parent

    def __repr__(self) -> str:
        return f"ObjectStoreBackupProvider({self.url!r})"

    # -- helpers -------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return f"{self._root}/{name}" if self._root else name

    def _write_sidecar(self, side: str, data: bytes) -> None:
        if self._local:
            path = Path(side)
            _write_atomic(path, lambda f: f.write(data))
            fsync_dir(path.parent)
        else:
            self._fs.pipe_file(side, data)

    def _abandon(self, f: Any, blob: str) -> None:
        """Throw away a half-written blob (best effort: it is unlisted anyway)."""
        if f is not None:
            try:
                from fsspec.spec import AbstractBufferedFile

                if isinstance(f, AbstractBufferedFile):
                    f.discard()  # aborts an S3 multipart upload
                    f.closed = True  # so that nothing commits it later
                else:
                    f.close()
            except Exception:
                pass
        try:
            self._fs.rm_file(blob)
        except Exception:
            pass

    def _describe_ref(self, ref: str) -> dict[str, Any]:
        try:
            name = _object_name(ref)
        except ConfigError:
            raise ProviderError(f"{self.url} holds no backup {ref!r}; list() shows the backups it holds") from None
        try:
            raw = self._fs.cat_file(self._path(name + SIDECAR))
        except FileNotFoundError:
            raise ProviderError(f"{self.url} holds no backup {ref!r}; list() shows the backups it holds") from None
        except Exception as exc:
            raise ProviderUnavailableError(
                f"could not read the description of {ref!r} at {self.url} ({_describe(exc)})"
            ) from None
        return self._parse(name, raw)

    def _parse(self, name: str, raw: bytes) -> dict[str, Any]:
        try:
            record = json.loads(raw)
            if record.get("ref") != name:
                raise ValueError(f"it names {record.get('ref')!r}")
            _parse_time(record["uploaded_at"])
            record["size"] = int(record["size"])
            if not isinstance(record.setdefault("metadata", {}), dict):
                raise ValueError("its metadata is not an object")
            return record
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProviderError(
                f"the backup description {self.url}/{name}{SIDECAR} is unreadable ({exc}); move it away (its backup is then ignored)"
            ) from None


def _object_name(name: Any) -> str:
    """``name`` when it is safe as one object name under the URL; ConfigError otherwise."""
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 200
        or "/" in name
        or "\\" in name
        or ".." in name
        or name.startswith(".")
        or name.endswith(SIDECAR)
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
    ):
        raise ConfigError(
            f"the backup name {name!r} cannot be an object name: use 1-200 characters without '/', '\\', '..', "
            f"control characters or a leading '.', not ending in {SIDECAR!r}"
        )
    return name


def _protocols(fs: Any) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _describe(exc: BaseException) -> str:
    """One line naming the error (no traceback, no credentials: fsspec errors do not carry them)."""
    text = " ".join(str(exc).split()) or "no details"
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}"
