"""Opening only regular files, and a folder walk that always ends.

A FIFO named `x.safetensors` blocks `open()` forever (until a writer comes), a device file reads forever, and two
folder symlinks pointing back at their folder make `os.walk(followlinks=True)` loop until the path-length limit
(listing each file dozens of times). So:
* `open_regular(path)` opens with `O_NONBLOCK` (which makes opening a FIFO return at once), checks with `fstat` that
  it is a regular file, then clears `O_NONBLOCK`; anything else raises `NotRegularFileError` (an OSError, so every
  "cannot read this file" handler already catches it).
* `walk(root)` follows folder symlinks but keeps a visited (st_dev, st_ino) set, so each real folder is listed once,
  and stops after `max_entries` names or `max_seconds` (the listing so far is kept, `WalkStats.truncated` says why).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

log = logging.getLogger(__name__)

MAX_WALK_ENTRIES = 1_000_000
MAX_WALK_SECONDS = 120.0


class NotRegularFileError(OSError):
    """The path is a FIFO, socket, device or folder: nothing is read from it."""


def kind_of(mode: int) -> str:
    """A word for a file type: 'FIFO', 'socket', 'device', 'folder', 'file'."""
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISDIR(mode):
        return "folder"
    return "file" if stat.S_ISREG(mode) else "special file"


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open `path` for binary reading if (after following symlinks) it is a regular file; NotRegularFileError
    (errno EINVAL) otherwise, without ever blocking on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(errno.EINVAL, f"is a {kind_of(mode)}, not a regular file", os.fspath(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return open(fd, "rb", closefd=True)  # noqa: SIM115 - the caller closes it
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: str | os.PathLike[str]) -> os.stat_result:
    """`os.stat(path)` (symlinks followed) when it is a regular file; NotRegularFileError otherwise."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(errno.EINVAL, f"is a {kind_of(st.st_mode)}, not a regular file", os.fspath(path))
    return st


def read_regular(path: str | os.PathLike[str], max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file; OSError (errno EFBIG) when it is larger than `max_bytes`."""
    with open_regular(path) as handle:
        if max_bytes is not None:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise OSError(errno.EFBIG, f"is {size} bytes (limit {max_bytes})", os.fspath(path))
            data = handle.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise OSError(errno.EFBIG, f"is larger than {max_bytes} bytes", os.fspath(path))
            return data
        return handle.read()


@dataclass
class WalkStats:
    """What one `walk` saw: names listed, folders skipped as already visited (symlink loops), why it stopped early."""

    entries: int = 0
    loops: list[str] = field(default_factory=list)
    truncated: str | None = None


def walk(root: str | os.PathLike[str], sort_key: Callable[[str], object] | None = None,
         max_entries: int = MAX_WALK_ENTRIES, max_seconds: float = MAX_WALK_SECONDS,
         stats: WalkStats | None = None) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk(root, followlinks=True)` in `sort_key` order (top-down; callers may prune `dirnames`), each real
    folder once (visited (st_dev, st_ino) set), bounded by `max_entries` names and `max_seconds`."""
    stats = stats if stats is not None else WalkStats()
    deadline = time.monotonic() + max_seconds
    visited: set[tuple[int, int]] = set()
    pending = [os.fspath(root)]
    while pending:
        folder = pending.pop()
        try:
            st = os.stat(folder)
        except OSError:
            continue
        ident = (st.st_dev, st.st_ino)
        if ident in visited:
            stats.loops.append(folder)
            log.warning("folder %s was already listed (a symlink loop or a second link to it): skipped", folder)
            continue
        visited.add(ident)
        dirnames: list[str] = []
        filenames: list[str] = []
        try:
            with os.scandir(folder) as listing:
                for item in listing:
                    stats.entries += 1
                    if stats.entries > max_entries or time.monotonic() > deadline:
                        stats.truncated = (f"stopped after {max_entries} names" if stats.entries > max_entries
                                           else f"stopped after {max_seconds:g} s")
                        break
                    try:
                        is_dir = item.is_dir(follow_symlinks=True)
                    except OSError:
                        is_dir = False
                    (dirnames if is_dir else filenames).append(item.name)
        except OSError as exc:
            log.warning("cannot list %s: %s", folder, exc.strerror or exc)
            continue
        if sort_key is not None:
            dirnames.sort(key=sort_key)
            filenames.sort(key=sort_key)
        yield folder, dirnames, filenames
        if stats.truncated:
            log.warning("scan of %s %s; the files listed so far are used", root, stats.truncated)
            return
        pending.extend(os.path.join(folder, name) for name in reversed(dirnames))
