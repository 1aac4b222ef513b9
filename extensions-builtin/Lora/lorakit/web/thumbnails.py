"""Preview thumbnails: a small PNG made from a preview image, and a memory cache of them bounded by bytes.

Used by the API's `GET /sdapi/v1/lora/thumb` and the card page's `GET /lora-ui/thumb?size=` (cards ask for the
thumbnail size that fits their width times the screen's pixel ratio, so a 4 MB preview is not sent for a 180 px card).
Keys name the file version and size (real path, mtime_ns, byte size, thumbnail size), so an edited preview is made
again and never served stale.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from PIL import Image, ImageOps, UnidentifiedImageError

CACHE_BYTES = 32 * 1024 * 1024


def make_thumbnail(data: bytes, size: int) -> bytes:
    """A PNG at most `size` pixels on its longer side from image bytes (aspect kept, EXIF orientation applied);
    ValueError when they are not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (size, size))
            image.seek(0)
            frame = ImageOps.exif_transpose(image)
            frame = frame.convert("RGBA" if "A" in frame.getbands() or "transparency" in frame.info else "RGB")
            frame.thumbnail((size, size))
            out = io.BytesIO()
            frame.save(out, format="PNG")
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, EOFError) as exc:
        raise ValueError(f"the preview is not a readable image: {exc}") from exc


class ThumbnailCache:
    """Thumbnails by key, least recently used dropped first once they hold more than `max_bytes`."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self.items: OrderedDict[Hashable, bytes] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.items)

    def get_or_make(self, key: Hashable, read: Callable[[], bytes], size: int) -> bytes:
        """The cached PNG for `key`, else a thumbnail of `read()` at `size` (ValueError when it is no image)."""
        with self.lock:
            png = self.items.get(key)
            if png is not None:
                self.items.move_to_end(key)
                return png
        png = make_thumbnail(read(), size)
        with self.lock:
            if key not in self.items:
                self.items[key] = png
                self.bytes += len(png)
            while self.bytes > self.max_bytes and self.items:
                _, dropped = self.items.popitem(last=False)
                self.bytes -= len(dropped)
        return png

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.bytes = 0
