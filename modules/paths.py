"""Where the WebUI keeps its files: data dir, model folders, outputs, config.json and cache.json.

Everything hangs off one `Paths` object built from the command-line flags, so tests can point a whole
WebUI at a temporary folder.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Paths:
    """All folders and files the host uses. `models_dir` holds `Stable-diffusion/`, `Lora/`, `LyCORIS/`."""

    data_dir: Path
    models_dir: Path
    ckpt_dir: Path
    lora_dir: Path
    lyco_dir: Path
    outputs_dir: Path
    config_file: Path
    cache_file: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Paths:
        """Build from parsed flags (`--data-dir`, `--models-dir`, `--ckpt-dir`, `--lora-dir`, `--lyco-dir`)."""
        data_dir = Path(getattr(args, "data_dir", None) or REPO_ROOT).resolve()
        models_dir = Path(getattr(args, "models_dir", None) or data_dir / "models").resolve()
        return cls(
            data_dir=data_dir,
            models_dir=models_dir,
            ckpt_dir=Path(getattr(args, "ckpt_dir", None) or models_dir / "Stable-diffusion").resolve(),
            lora_dir=Path(getattr(args, "lora_dir", None) or models_dir / "Lora").resolve(),
            lyco_dir=Path(getattr(args, "lyco_dir", None) or models_dir / "LyCORIS").resolve(),
            outputs_dir=Path(getattr(args, "outputs_dir", None) or data_dir / "outputs").resolve(),
            config_file=data_dir / "config.json",
            cache_file=data_dir / "cache.json",
        )

    def ensure(self) -> None:
        """Create the folders the host writes into (the LyCORIS folder is only read when it exists)."""
        for folder in (self.data_dir, self.models_dir, self.ckpt_dir, self.lora_dir, self.outputs_dir):
            folder.mkdir(parents=True, exist_ok=True)
