"""URI helpers over fsspec: plain paths, file://, s3://, gs://... all look the same to a step."""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import tempfile
from datetime import UTC, datetime
from typing import IO, Any

import fsspec
import numpy as np


def join(base: str, *parts: str) -> str:
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    return posixpath.join(base, *parts)


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def is_dir(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.isdir(path)


def as_text(name: str) -> str:
    """A name read from disk as valid text. POSIX names are bytes: Python decodes those that are
    not UTF-8 with lone surrogates ("ca\\udcfft"), which JSON, Parquet and MLflow refuse; here
    each such byte becomes a visible escape ("ca\\xfft"). UTF-8 names are unchanged."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def special_file(uri: str) -> str | None:
    """What a local entry is when it is neither a regular file nor a folder ("a FIFO", "a
    socket", "a device"), else None. Opening a FIFO blocks until someone writes to it, so
    nothing may open one it has not checked; object stores hold only regular files."""
    import stat

    if not is_local(uri):
        return None
    try:
        mode = os.stat(uri.removeprefix("file://")).st_mode
    except OSError:
        return None  # gone, or a dangling link: the reader says so when it opens it
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.makedirs(path, exist_ok=True)


def open_uri(uri: str, mode: str = "rb") -> IO[Any]:
    if "w" in mode:
        parent = uri.rsplit("/", 1)[0]
        if parent and parent != uri:
            makedirs(parent)
    return fsspec.open(uri, mode).open()


def list_dir(uri: str) -> list[str]:
    """Entries of a folder as URIs in the folder's own scheme, sorted by name."""
    fs, path = filesystem(uri)
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    entries = sorted(fs.ls(path, detail=False))
    if is_local(uri):
        return entries
    return [f"{protocol}://{entry}" for entry in entries]


def modified_time(uri: str) -> datetime | None:
    """When the file or folder was last modified (UTC), if the store says."""
    fs, path = filesystem(uri)
    try:
        stamp = fs.modified(path)
    except (NotImplementedError, OSError):
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def basename(uri: str) -> str:
    return posixpath.basename(uri.rstrip("/"))


def read_json(uri: str) -> Any:
    with open_uri(uri, "rb") as handle:
        return json.load(handle)


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def write_json(uri: str, payload: Any) -> None:
    """Write `payload` as JSON, atomically (see `write_bytes`)."""
    write_bytes(uri, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())


def write_bytes(uri: str, data: bytes) -> None:
    """Replace the file at `uri` with `data`, whole or not at all.

    Locally the bytes go to a temporary sibling that is synced and then renamed over the
    target, so a reader (or a retry after a kill) sees the old file or the new one, never half
    of one. An object store's single PUT has that property already.
    """
    if not is_local(uri):
        with open_uri(uri, "wb") as handle:
            handle.write(data)
        return
    path = uri.removeprefix("file://")
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # what open() would have made, not mkstemp's 0600
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def save_npz(uri: str, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(uri, buffer.getvalue())


def load_npz(uri: str) -> dict[str, np.ndarray]:
    with open_uri(uri, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def copy_tree(src: str, dst: str) -> None:
    src_fs, src_path = filesystem(src)
    if src_fs.isdir(src_path):
        makedirs(dst)
        for entry in list_dir(src):
            copy_tree(entry, join(dst, basename(entry)))
        return
    with open_uri(src, "rb") as reader, open_uri(dst, "wb") as writer:
        while chunk := reader.read(1 << 20):
            writer.write(chunk)


def move(src: str, dst: str) -> None:
    """Move a file or folder; locally one rename, so `dst` appears whole."""
    if is_local(src) and is_local(dst):
        os.replace(src.removeprefix("file://"), dst.removeprefix("file://"))
        return
    fs, src_path = filesystem(src)
    fs.mv(src_path, filesystem(dst)[1], recursive=True)


def remove(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.rm(path, recursive=True)
