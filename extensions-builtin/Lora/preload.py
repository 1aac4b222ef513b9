"""Command-line flags of the Lora extension."""

import argparse


def preload(parser: argparse.ArgumentParser) -> None:
    """Register `--lora-dir` and `--lyco-dir` (A1111's `--lyco-dir-backcompat` is accepted as an alias)."""
    parser.add_argument("--lora-dir", type=str, default=None, help="folder with LoRA files (default: models/Lora)")
    parser.add_argument("--lyco-dir", "--lyco-dir-backcompat", dest="lyco_dir", type=str, default=None,
                        help="second folder with LoRA/LyCORIS files, scanned when it exists (default: models/LyCORIS)")
