"""The Lora card page of the extra-networks area. Filled in by the Lora tab work (issue 4)."""

from __future__ import annotations

from typing import Any


def register_page(webui: Any, engine: Any) -> None:
    """Add the Lora page to the WebUI's extra-network pages."""
