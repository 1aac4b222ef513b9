"""Shared pytest set-up: the repository root and the Lora extension folder are importable."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LORA_DIR = ROOT / "extensions-builtin" / "Lora"
for path in (ROOT, LORA_DIR, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
