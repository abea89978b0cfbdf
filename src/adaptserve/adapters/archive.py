"""Unpacking an uploaded adapter archive (.tar, .tar.gz/.tgz, .zip) into a staging
folder, with limits an attacker cannot talk its way past:

- at most `MAX_ENTRIES` entries of any kind (files and directories alike) and
  `MAX_FILES` files; the count is checked before an entry is kept or written, so a
  tar of millions of directories is refused at entry 257, not read whole;
- a zip's central directory is sized from its end record before `zipfile` parses it
  (it would build an object per entry up front);
- a gzip stream is decompressed through a counter: headers (pax, long names) count
  too, so a small upload cannot expand into gigabytes in memory;
- at most the unpacked-size limit written, whatever the archive declares;
- no absolute paths, no `..`, no links or devices.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from adaptserve.adapters.spec import AdapterInvalidError
from adaptserve.errors import PayloadTooLargeError, StorageError

MAX_FILES = 64
MAX_ENTRIES = 256
MAX_ZIP_DIRECTORY_BYTES = MAX_ENTRIES * 1024  # central-directory records, names included
_HEADROOM = 1 << 20  # tar headers and padding on top of the files' own bytes


def untar(archive: Path, dest: Path, limit: int) -> None:
    try:
        with _decompressed(archive, limit + _HEADROOM) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            files, total = 0, 0
            for entries, member in enumerate(tar, start=1):
                _check_entries(entries)
                path = _safe_member(member.name)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise AdapterInvalidError(f"archive entry {member.name!r} is a link or device")
                files, total = files + 1, total + member.size
                _check_budget(files, total, limit)
                copy_capped(dest / path, tar.extractfile(member), limit)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise AdapterInvalidError(f"the upload is not a readable tar archive ({exc})", param="file") from exc


def unzip(archive: Path, dest: Path, limit: int) -> None:
    try:
        _check_zip_directory(archive)
        with zipfile.ZipFile(archive) as zf:
            files, total = 0, 0
            for entries, info in enumerate(zf.infolist(), start=1):
                _check_entries(entries)
                path = _safe_member(info.filename)
                if info.is_dir():
                    continue
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise AdapterInvalidError(f"archive entry {info.filename!r} is a link")
                files, total = files + 1, total + info.file_size
                _check_budget(files, total, limit)
                with zf.open(info) as src:
                    copy_capped(dest / path, src, limit)
    except (zipfile.BadZipFile, OSError) as exc:
        raise AdapterInvalidError(f"the upload is not a readable zip archive ({exc})", param="file") from exc


def copy_capped(target: Path, source: IO[bytes] | None, limit: int) -> None:
    """Copy with a hard cap: declared sizes in an archive can lie. A failed read is the
    upload's fault (400); a failed write is the disk's (507)."""
    if source is None:
        return
    written = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            while block := _read(source):
                written += len(block)
                if written > limit:
                    raise PayloadTooLargeError(f"the unpacked adapter is larger than {limit} bytes")
                out.write(block)
    except OSError as exc:
        raise storage_error(exc) from exc


def storage_error(exc: OSError) -> StorageError:
    return StorageError(f"The server could not store the adapter: {exc.strerror or exc}.")


class _Capped(io.RawIOBase):
    """A reader that refuses to yield more than `limit` bytes in all."""

    def __init__(self, inner: io.BufferedIOBase | gzip.GzipFile, limit: int) -> None:
        self._inner, self._left = inner, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]  # typeshed's Buffer
        data = self._inner.read(min(len(buffer), self._left + 1))
        if len(data) > self._left:
            raise PayloadTooLargeError("the unpacked archive is larger than the adapter size limit")
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._inner.close()
        super().close()


def _decompressed(archive: Path, limit: int) -> io.BufferedReader:
    with open(archive, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    # Closed with the returned reader (`_Capped.close`).
    inner = gzip.open(archive, "rb") if gzipped else open(archive, "rb")  # noqa: SIM115
    return io.BufferedReader(_Capped(inner, limit))


def _check_zip_directory(archive: Path) -> None:
    """Read the end-of-central-directory record: refuse too many entries, a central
    directory too large, and zip64 (an adapter never needs it)."""
    with open(archive, "rb") as f:
        f.seek(0, io.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - (1 << 16) - 22))
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise AdapterInvalidError("the upload is not a readable zip archive (no end record)", param="file")
    _, _, _, _, entries, directory_bytes, offset, _ = struct.unpack("<4s4H2LH", tail[at : at + 22])
    zip64 = at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07"  # the zip64 locator precedes the record
    if entries == 0xFFFF or offset == 0xFFFFFFFF or zip64:
        raise AdapterInvalidError("zip64 archives are not accepted; an adapter is a few small files", param="file")
    if entries > MAX_ENTRIES or directory_bytes > MAX_ZIP_DIRECTORY_BYTES:
        raise AdapterInvalidError(f"the archive has more than {MAX_ENTRIES} entries", param="file")


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or name.startswith(("/", "\\")) or "\\" in name:
        raise AdapterInvalidError(f"archive path {name!r} points outside the archive")
    return path


def _check_entries(entries: int) -> None:
    if entries > MAX_ENTRIES:
        raise AdapterInvalidError(f"the archive has more than {MAX_ENTRIES} entries (files and folders)")


def _check_budget(files: int, total: int, limit: int) -> None:
    if files > MAX_FILES:
        raise AdapterInvalidError(f"the archive has more than {MAX_FILES} files")
    if total > limit:
        raise PayloadTooLargeError(f"the unpacked adapter is larger than {limit} bytes")


def _read(source: IO[bytes]) -> bytes:
    try:
        return source.read(1 << 20)
    except (OSError, EOFError, zlib.error, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise AdapterInvalidError(f"the adapter's files could not be read ({exc})", param="file") from exc
