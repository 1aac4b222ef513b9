"""Saving generated images as PNG with the infotext in the `parameters` text chunk, and reading it back.

File names follow A1111: `NNNNN-SEED.png`, where NNNNN is one more than the highest number already used in
the folder. Writes are atomic (`modules.atomic_io`), so a crash never leaves a half-written image.
"""

from __future__ import annotations

import io
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from modules.atomic_io import write_bytes_atomic

log = logging.getLogger(__name__)

# PIL `info` keys that describe the encoding, not the generation (A1111 drops them from "other info").
IGNORED_INFO_KEYS = {
    "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background", "timestamp",
    "duration", "progressive", "progression", "icc_profile", "chromaticities", "photoshop", "gamma", "srgb",
    "transparency", "aspect",
}

RE_LEADING_NUMBER = re.compile(r"^(\d+)")


def image_to_png_bytes(image: Image.Image, infotext: str | None = None, extra: dict[str, str] | None = None) -> bytes:
    """Encode `image` as PNG; `infotext` goes into the `parameters` chunk, `extra` into more text chunks."""
    pnginfo = PngImagePlugin.PngInfo()
    if infotext:
        pnginfo.add_text("parameters", infotext)
    for key, value in (extra or {}).items():
        pnginfo.add_text(key, str(value))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=pnginfo)
    return buffer.getvalue()


EXIF_IFD = 0x8769
EXIF_USER_COMMENT = 0x9286


def decode_user_comment(raw: bytes | str | None) -> str | None:
    """An EXIF UserComment as text: 8-byte charset prefix ("UNICODE" = UTF-16 big-endian, "ASCII") then data."""
    if raw is None or isinstance(raw, str):
        return raw
    prefix, data = raw[:8], raw[8:]
    if prefix.startswith(b"UNICODE"):
        return data.decode("utf-16-be", errors="replace")
    if prefix.startswith(b"ASCII") or prefix == b"\0" * 8:
        return data.decode("utf-8", errors="replace").rstrip("\0")
    return raw.decode("utf-8", errors="replace").rstrip("\0")


def read_info_from_image(image: Image.Image) -> tuple[str | None, dict[str, Any]]:
    """Return (the generation parameters or None, every other text item of the image's info).

    PNG: the `parameters` text chunk. JPEG/WebP (as A1111 saves them): the EXIF UserComment.
    """
    items = dict(image.info or {})
    geninfo = items.pop("parameters", None)
    if geninfo is None and "exif" in items:
        try:
            geninfo = decode_user_comment(image.getexif().get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT))
        except (ValueError, OSError, SyntaxError) as exc:  # PIL reports malformed EXIF with these
            log.warning("could not read EXIF of image: %s", exc)
    if geninfo is None and isinstance(items.get("comment"), (str, bytes)):  # some tools write a comment only
        comment = items["comment"]
        geninfo = comment.decode("utf-8", errors="replace") if isinstance(comment, bytes) else comment
        items.pop("comment")
    if isinstance(geninfo, bytes):
        geninfo = geninfo.decode("utf-8", errors="replace")
    for key in IGNORED_INFO_KEYS:
        items.pop(key, None)
    return geninfo, items


def next_sequence_number(folder: Path) -> int:
    """One more than the largest leading number of a file name in `folder` (0 when there is none)."""
    highest = -1
    if folder.is_dir():
        for entry in folder.iterdir():
            match = RE_LEADING_NUMBER.match(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def dated_folder(root: Path, when: datetime | None = None) -> Path:
    """`root/YYYY-MM-DD` for the local date of `when` (default: now)."""
    return root / (when or datetime.now()).strftime("%Y-%m-%d")


IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


def encode_image(image: Image.Image, infotext: str | None = None, extension: str = "png", quality: int = 80,
                 lossless: bool = False, extra: dict[str, str] | None = None) -> bytes:
    """`image` encoded as `extension` (png, jpg/jpeg, webp: A1111's `samples_format`).

    PNG keeps `infotext` in its `parameters` chunk; JPEG and WebP in the EXIF UserComment ("UNICODE" + UTF-16
    big-endian, as A1111 writes it), which `read_info_from_image` reads back. `quality` is A1111's `jpeg_quality`
    (JPEG and lossy WebP); `lossless` its `webp_lossless`; `extra` goes into more PNG text chunks (Extras:
    `postprocessing`; other formats drop it). ValueError for another extension.
    """
    kind = IMAGE_FORMATS.get(extension.lower().lstrip("."))
    if kind is None:
        raise ValueError(f"unsupported image format {extension!r}; use one of {', '.join(IMAGE_FORMATS)}")
    if kind == "PNG":
        return image_to_png_bytes(image, infotext, extra)
    kwargs: dict[str, Any] = {"quality": int(quality)}
    if kind == "WEBP" and lossless:
        kwargs = {"lossless": True, "quality": 100}
    if infotext:
        exif = Image.Exif()
        exif.get_ifd(EXIF_IFD)[EXIF_USER_COMMENT] = b"UNICODE\0" + infotext.encode("utf-16-be")
        kwargs["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=kind, **kwargs)
    return buffer.getvalue()


def save_image(
    image: Image.Image,
    folder: Path,
    seed: int | None = None,
    infotext: str | None = None,
    extension: str = "png",
    pnginfo_enabled: bool = True,
    quality: int = 80,
    lossless: bool = False,
    extra: dict[str, str] | None = None,
) -> Path:
    """Save `image` as `folder/NNNNN-SEED.<extension>` (NNNNN = next free number) atomically; return the path.

    With `pnginfo_enabled` the infotext (and `extra`) is stored in the file (A1111's option `enable_pnginfo`); see
    `encode_image` for the formats, `quality`, `lossless` and `extra`.
    """
    extension = extension.lower().lstrip(".")
    data = encode_image(image, infotext if pnginfo_enabled else None, extension, quality, lossless,
                        extra if pnginfo_enabled else None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    number = next_sequence_number(folder)
    suffix = f"-{seed}" if seed is not None else ""
    while True:  # another writer may have taken the number between the scan and now
        path = folder / f"{number:05d}{suffix}.{extension}"
        if not path.exists():
            break
        number += 1
    write_bytes_atomic(path, data)
    log.debug("saved %s", path)
    return path
