"""A LoRA's companion files (preview image, `<stem>.txt` / `<stem>.description.txt` description, `<stem>.json`
sidecar): the one rule for where they may lie, and the one way to open one for reading.

* `companion_allowed(path, lora_filename, roots)`: the rule (below), used by the registry, the sidecar editor, the API
  and the card page.
* `open_companion(path, lora_filename, roots)`: the rule checked, then the *real* path opened with `O_NOFOLLOW` and
  only a regular file accepted, so a symlink swapped in between the check and the open is not followed (the window
  a check-then-serve-by-path leaves open). The API's preview/thumbnail routes and the card page's thumbnail route
  serve what this returns.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import LoraError


class CompanionRefused(LoraError):
    """The companion rule refuses the file (a symlink to outside the Lora folders, not beside the LoRA file)."""


class CompanionUnreadable(LoraError):
    """The allowed companion file cannot be opened, or is not a regular file."""


@dataclass
class OpenedCompanion:
    """An open, checked companion file: the descriptor (the caller closes it), its stat and its real path."""

    fd: int
    stat: os.stat_result
    real_path: str

    def read(self) -> bytes:
        """The whole content; closes the descriptor."""
        with os.fdopen(self.fd, "rb") as handle:
            return handle.read()


def _real_inside(real: str, roots: Iterable[str | os.PathLike[str]]) -> bool:
    """Whether the real path `real` lies inside the real path of one of `roots`."""
    for root in roots:
        real_root = os.path.realpath(root)
        try:
            if os.path.commonpath([real, real_root]) == real_root:
                return True
        except ValueError:  # different drives
            continue
    return False


def inside(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]]) -> bool:
    """Whether the real path of `path` (symlinks resolved) lies inside the real path of one of `roots`."""
    return _real_inside(os.path.realpath(path), roots)


def companion_allowed(path: str | os.PathLike[str], lora_filename: str | os.PathLike[str],
                      roots: Iterable[str | os.PathLike[str]]) -> bool:
    """Whether a companion file of the LoRA `lora_filename` (its preview image, `<stem>.txt` /
    `<stem>.description.txt` description or `<stem>.json` sidecar) may be read, served or written at `path`.

    The rule, the one place the registry, the API and the card page take it from: a companion is allowed when its
    real path (symlinks resolved)
    * lies inside the real path of one of the Lora `roots`, or
    * lies directly in the real path of the folder the LoRA is listed in, or
    * lies beside the LoRA file's own real path and is named after it (`<real stem>.*`), for a LoRA that is itself a
      symlink.
    Why: the registry follows symlinked folders and files (`models/Lora/shared -> /mnt/loras` is a common setup), so
    `/mnt/loras/x.png` beside `/mnt/loras/x.safetensors` belongs to that LoRA and is shown. A companion that is itself
    a symlink to anywhere else (`x.json -> /etc/passwd`, `x.png -> ~/private/photo.png`) is refused: otherwise
    whoever can put a link into the Lora folders could read other files through the cards and the API, or overwrite
    them through the editor. `path` need not exist (a sidecar about to be created): its real path is then the real
    path of its folder plus its name; a dangling symlink is judged by where it points.
    """
    path, lora_filename = os.fspath(path), os.fspath(lora_filename)
    folder = os.path.dirname(lora_filename)
    if os.path.dirname(path) == folder and os.path.basename(path) not in ("", ".", "..") and not os.path.islink(path):
        # The common case, decided by one lstat with the same answer as below: a companion in the LoRA's own folder
        # that is no symlink has the real path of that folder plus its name, so it lies in the LoRA's real folder.
        return True
    real = os.path.realpath(path)
    if _real_inside(real, roots):
        return True
    if os.path.dirname(real) == os.path.realpath(folder or os.curdir):
        return True
    # Beside the LoRA file's own real path (the LoRA itself is a symlink): only a file named after that real file, so
    # a LoRA linked into a system folder does not open the rest of that folder (`x.txt -> /etc/passwd`).
    real_lora = os.path.realpath(lora_filename)
    stem = os.path.splitext(os.path.basename(real_lora))[0]
    return os.path.dirname(real) == os.path.dirname(real_lora) and os.path.basename(real).startswith(stem + ".")


def open_companion(path: str | os.PathLike[str], lora_filename: str | os.PathLike[str],
                   roots: Iterable[str | os.PathLike[str]], what: str = "companion file") -> OpenedCompanion:
    """Open the companion file `path` of the LoRA `lora_filename` for reading (see the module docstring).

    Raises CompanionRefused when the rule refuses it, CompanionUnreadable when it cannot be opened or is not a
    regular file (messages name `what`)."""
    if not companion_allowed(path, lora_filename, roots):
        raise CompanionRefused(f"the {what} lies outside the Lora folders and not beside the LoRA file")
    real = os.path.realpath(path)
    try:
        # O_NONBLOCK: opening a FIFO returns at once (then refused below) instead of waiting for a writer
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise CompanionUnreadable(f"the {what} cannot be read: {exc.strerror or exc}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CompanionUnreadable(f"the {what} is not a regular file")
    os.set_blocking(fd, True)
    return OpenedCompanion(fd, st, real)
