"""Command-line flags: the host's `preload.py` plus every extension's `preload.py` add to one parser."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Sequence
from pathlib import Path

from modules.paths import REPO_ROOT


def extension_dirs(root: Path = REPO_ROOT, include_user: bool = True) -> list[Path]:
    """Extension folders in load order: `extensions-builtin/*` then `extensions/*`, each sorted by name."""
    folders = [root / "extensions-builtin"] + ([root / "extensions"] if include_user else [])
    found: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            found.extend(sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
    return found


def _run_preload(path: Path, parser: argparse.ArgumentParser) -> None:
    spec = importlib.util.spec_from_file_location(f"_preload_{abs(hash(str(path)))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "preload"):
        module.preload(parser)


def build_parser(extensions: Sequence[Path] | None = None) -> argparse.ArgumentParser:
    """The full parser: host flags, then each extension's flags."""
    parser = argparse.ArgumentParser(prog="webui", description="Stable Diffusion WebUI")
    _run_preload(REPO_ROOT / "preload.py", parser)
    for ext in extensions if extensions is not None else extension_dirs():
        if (ext / "preload.py").is_file():
            _run_preload(ext / "preload.py", parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv` (default: none, so tests get the defaults) with every extension's flags registered."""
    return build_parser().parse_args(list(argv) if argv is not None else [])
