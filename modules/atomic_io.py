"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename over the target.

A crash or a full disk during the write leaves the previous file intact (the rename is the only step that
changes what readers see); a failed write removes its temporary file and raises an OSError that names the target.
A process killed mid-write leaves a hidden `.<name>.*.tmp` beside the target, which no reader looks at.
Temporary names stay within the 255-byte name limit even for targets whose own name is close to it.
Permissions: the new file (or folder) gets the mode of the one it replaces, or the process umask's default for a new
one (0644 / 0755 under the usual umask 022), not the 0600 / 0700 of a temporary file.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modules import safe_json

MAX_TEMP_PREFIX = 200  # + 8 random characters + ".tmp" stays under the usual 255-byte limit on a file name


def _temp_prefix(target: Path) -> str:
    """`.<name>.` for the temporary file beside `target`, with the name cut so that the temporary name fits."""
    name = target.name
    while len(os.fsencode(name)) > MAX_TEMP_PREFIX:
        name = name[:-1]
    return f".{name}."


def process_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (`/proc/self/status`); elsewhere by setting
    and restoring it at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def final_mode(target: Path, directory: bool = False) -> int:
    """The permission bits a file or folder written over `target` should get: those of the existing `target` (not
    followed through a symlink's own mode: the link's target's), else the umask's default for a new one."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return (0o777 if directory else 0o666) & ~process_umask()


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace `path` with `data` atomically; the parent folder is created if missing. Failures raise OSError with
    `filename` set to `path` when the failing call did not name a file itself (a full disk fails in `write`)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), final_mode(target))
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as exc:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace `path` with UTF-8 `text` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any, indent: int | None = 4) -> None:
    """Replace `path` with `data` as UTF-8 JSON (non-ASCII kept readable) atomically. Strings UTF-8 cannot hold
    (lone surrogates: file names that are not valid UTF-8, as Python decodes them) are written as `\\u` escapes,
    which read back as the same strings. NaN/Infinity raise ValueError: no file we write holds non-standard JSON."""
    text = safe_json.dumps(data, indent=indent, ensure_ascii=False) + "\n"
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        encoded = (safe_json.dumps(data, indent=indent, ensure_ascii=True) + "\n").encode("ascii")
    write_bytes_atomic(path, encoded)


def read_json(path: str | os.PathLike[str], default: Any = None, keep_surrogates: bool = False,
              max_depth: int = safe_json.MAX_DEPTH) -> Any:
    """Read a JSON file through the one hardened reader (`modules.safe_json.read_file`: regular files only, size,
    depth and number limits); return `default` when it does not exist. Bad JSON raises ValueError (`JsonError`)
    naming the file; a FIFO or folder raises OSError."""
    return safe_json.read_file(path, default=default, keep_surrogates=keep_surrogates, max_depth=max_depth)


@contextmanager
def atomic_path(path: str | os.PathLike[str], directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that needs a file name (or a folder with `directory=True`);
    on success it is renamed over `path`, on failure it is removed and `path` is untouched."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, final_mode(target, directory))
        if directory and target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
