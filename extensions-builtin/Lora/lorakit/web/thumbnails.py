"""Preview thumbnails, always made on the server: the browser never receives a full-size preview as a card picture
(a 400-megapixel PNG is 1.6 GB once decoded, and a 4 MB preview is not sent for a 180 px card).

* `make_thumbnail(data, size)`: a PNG at most `size` pixels on its longer side (aspect kept, EXIF orientation
  applied); images over `MAX_PREVIEW_PIXELS` are refused before decoding (PIL reads the size from the header), as
  is anything PIL cannot read.
* `ThumbnailCache`: made thumbnails by key, bounded in bytes (LRU). Used by the API's `GET /sdapi/v1/lora/thumb` and
  the card page's `GET /lora-ui/thumb?size=` (cards ask for the size that fits their width times the screen's pixel
  ratio). Keys name the file version and size (real path, mtime_ns, byte size, thumbnail size), so an edited preview
  is made again and never served stale.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable

from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PREVIEW_PIXELS = 64_000_000  # 8000 x 8000; larger previews are refused, not decoded
CARD_THUMB_SIZE = 512  # longer side of a card picture when the caller names no size
CACHE_BYTES = 32 * 1024 * 1024


def make_thumbnail(data: bytes, size: int) -> bytes:
    """A PNG at most `size` pixels on its longer side from image bytes; ValueError when they are not an image or
    hold more than `MAX_PREVIEW_PIXELS` pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_PREVIEW_PIXELS:
                    raise ValueError(f"the preview is {width}x{height} pixels, over the limit of "
                                     f"{MAX_PREVIEW_PIXELS // 1_000_000} megapixels")
                image.draft("RGB", (size, size))
                image.seek(0)
                frame = ImageOps.exif_transpose(image)
                frame = frame.convert("RGBA" if "A" in frame.getbands() or "transparency" in frame.info else "RGB")
                frame.thumbnail((size, size))
                out = io.BytesIO()
                frame.save(out, format="PNG")
                return out.getvalue()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ValueError(f"the preview is too large to decode ({exc})") from None
    except (UnidentifiedImageError, OSError, EOFError, SyntaxError) as exc:
        raise ValueError(f"the preview is not a readable image: {exc}") from None


class ThumbnailCache:
    """Thumbnails by key, least recently used dropped first once they hold more than `max_bytes`. Thread-safe."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def get_or_make(self, key: Hashable, read: Callable[[], bytes], size: int = CARD_THUMB_SIZE) -> bytes:
        """The cached PNG for `key`, else a thumbnail of `read()` at `size`, cached (ValueError when it is no image
        or too large; `key` must name the size)."""
        with self._lock:
            png = self._items.get(key)
            if png is not None:
                self._items.move_to_end(key)
                return png
        png = make_thumbnail(read(), size)
        with self._lock:
            if key not in self._items:
                self._items[key] = png
                self._bytes += len(png)
            while self._bytes > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)
        return png

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
