"""Paths of the repository the tests run in."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LORA_DIR = ROOT / "extensions-builtin" / "Lora"
