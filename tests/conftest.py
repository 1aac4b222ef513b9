"""Shared pytest set-up: the repository root and the Lora extension folder are importable; torch runs on one
thread (tests use tiny models, where thread start-up costs more than it saves, and a second busy process makes
OpenMP's spinning threads hundreds of times slower on a 2-core machine)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
LORA_DIR = ROOT / "extensions-builtin" / "Lora"
for path in (ROOT, LORA_DIR, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
