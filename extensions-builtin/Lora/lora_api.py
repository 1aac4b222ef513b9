"""HTTP API of the Lora extension (A1111-compatible routes and more). Filled in by the API work (issue 5)."""

from __future__ import annotations

from typing import Any


def mount(app: Any, webui: Any, engine: Any) -> None:
    """Add the Lora routes to the FastAPI `app`."""
