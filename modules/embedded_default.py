"""The embedded default checkpoint: a tiny SD1 model written on first start when the checkpoints folder is empty.

It has the real single-file key layout (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.text_model.*`) and seeded random weights (`modules.tiny_models`, the same builder
the tests use), so every feature runs on a fresh machine without downloading anything. Its images are noise; a
real checkpoint dropped into the folder is used the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from modules.sd_models import scan_checkpoints

log = logging.getLogger(__name__)

DEFAULT_NAME = "tiny-sd1-demo.safetensors"
DEFAULT_SEED = 1234


def ensure_embedded_default(paths: Any) -> Path | None:
    """Write `tiny-sd1-demo.safetensors` into `paths.ckpt_dir` when it holds no checkpoint at all.

    The file is written to a temporary name in the same folder and renamed into place (atomic), and has the same
    bytes on every machine and run (so its `Model hash` is the same everywhere). Returns the path written, or None
    when a checkpoint already exists.
    """
    folder = Path(paths.ckpt_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if scan_checkpoints(folder):
        return None
    from modules.tiny_models import write_single_file  # noqa: PLC0415 - pulls in diffusers/transformers: only to write

    target = write_single_file(folder / DEFAULT_NAME, "SD1", seed=DEFAULT_SEED)
    log.info("no checkpoint found: wrote the embedded tiny SD1 demo checkpoint %s", target)
    return target
