"""Content-addressed adapter files: `store/<sha256>/` folders, written atomically (the
classifier heads' store is one too).

An adapter is staged in a temp folder inside the store (same filesystem), checked,
fsynced, then renamed to its digest; a failure removes the temp folder, so nothing
half-written is ever visible (leftovers of a killed server are swept at start). A
write the disk refuses (full, read-only) is a `StorageError`; a damaged archive is the
client's error. Archives are unpacked by `archive.py`, with its limits.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol, TypeVar

from adaptserve.adapters.archive import copy_capped, storage_error, untar, unzip
from adaptserve.adapters.spec import AdapterInvalidError, tree_digest
from adaptserve.durable import fsync_tree
from adaptserve.errors import PayloadTooLargeError

log = logging.getLogger(__name__)

LEFTOVER_AGE_S = 3600  # older temp entries are a killed server's; younger may be another replica's


class Digested(Protocol):
    """What a validation returns: the content's SHA-256, the folder's name in the store."""

    @property
    def digest(self) -> str: ...


S = TypeVar("S", bound=Digested)


class AdapterStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        root.mkdir(parents=True, exist_ok=True)
        self._sweep()

    def staging(self) -> Path:
        try:
            return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        except OSError as exc:
            raise storage_error(exc) from exc

    def add(self, staged: Path, validate: Callable[[Path], S]) -> tuple[S, Path, bool]:
        """Validate a staged folder and move it to its content address (consumes it);
        → the spec, its folder, and whether this call stored it (False: the same content
        was there already, or a concurrent call stored it meanwhile, and only a caller that
        stored it may remove it). Also the head store's (`heads/catalog.py`): `validate`
        gives the digest."""
        try:
            folder = _single_root(staged)
            spec = validate(folder)
            target = self.root / spec.digest
            if target.exists():  # identical content is already stored
                return spec, target, False
            try:
                fsync_tree(folder)
                os.replace(folder, target)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and target.is_dir():
                    return spec, target, False
                raise storage_error(exc) from exc
            return spec, target, True
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def check_size(self, staged: Path) -> None:
        """A folder written on the server obeys the upload limit too."""
        total = sum(f.stat().st_size for f in staged.rglob("*") if f.is_file())
        if total > self.max_bytes:
            raise PayloadTooLargeError(f"the adapter would be {total} bytes, more than {self.max_bytes}")

    def copy_folder(self, source: Path) -> Path:
        """Stage a copy of a folder the server can read."""
        if not source.is_dir():
            raise AdapterInvalidError(f"{source} is not a folder the server can read", param="path")
        staged = self.staging()
        total = 0
        for file in source.rglob("*"):
            if file.is_symlink():
                shutil.rmtree(staged)
                raise AdapterInvalidError(f"{file.name} is a link; adapters must be plain files")
            if file.is_file():
                total += file.stat().st_size
                if total > self.max_bytes:
                    shutil.rmtree(staged)
                    raise PayloadTooLargeError(f"the adapter is larger than {self.max_bytes} bytes")
                try:
                    with _open_source(file) as src:
                        copy_capped(staged / file.relative_to(source), src, self.max_bytes)
                except BaseException:
                    shutil.rmtree(staged, ignore_errors=True)
                    raise
        return staged

    def unpack_upload(self, source: IO[bytes], filename: str) -> Path:
        """Stage an uploaded archive: copied to a temp file in the store, then unpacked."""
        upload = self.root / f".upload-{os.urandom(8).hex()}"
        try:
            copy_capped(upload, source, self.max_bytes)
            return self.unpack(upload, filename)
        finally:
            upload.unlink(missing_ok=True)

    def unpack(self, archive: Path, filename: str) -> Path:
        """Stage the contents of a .tar.gz/.tgz/.tar or .zip upload."""
        staged = self.staging()
        try:
            if filename.endswith(".zip"):
                unzip(archive, staged, self.max_bytes)
            elif filename.endswith((".tar.gz", ".tgz", ".tar")):
                untar(archive, staged, self.max_bytes)
            else:
                raise AdapterInvalidError("upload a .tar.gz, .tgz, .tar or .zip of a PEFT adapter folder", param="file")
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return staged

    def remove_staged(self, staged: Path) -> None:
        if staged.parent == self.root and staged.name.startswith(".staging-"):
            shutil.rmtree(staged, ignore_errors=True)

    def remove(self, path: Path) -> None:
        if path.parent == self.root:
            shutil.rmtree(path, ignore_errors=True)

    def _sweep(self) -> None:
        """Remove temp entries a killed server left (they were never visible)."""
        cutoff = time.time() - LEFTOVER_AGE_S
        for entry in self.root.glob(".*"):
            if entry.name.startswith((".staging-", ".upload-")) and entry.lstat().st_mtime < cutoff:
                log.info("removing %s, left by an interrupted upload", entry.name)
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def _open_source(file: Path) -> io.BufferedReader:
    try:
        return open(file, "rb")
    except OSError as exc:
        raise AdapterInvalidError(f"{file.name} cannot be read by the server ({exc.strerror})", param="path") from exc


def _single_root(staged: Path) -> Path:
    """Archives often hold one top folder (`my-adapter/adapter_config.json`): use it."""
    entries = [p for p in staged.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and not (staged / "adapter_config.json").exists():
        return entries[0]
    return staged


__all__ = ["AdapterStore", "tree_digest"]
