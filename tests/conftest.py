"""Shared pytest set-up: the Lora extension's folder offers its imports (`lorakit` and the A1111 facade modules) the
way the extension loader does; torch runs on one thread (tests use tiny models, where thread start-up costs more than
it saves, and a second busy process makes OpenMP's spinning threads hundreds of times slower on a 2-core machine).

`tests/` is a package, so pytest puts the repository root on `sys.path` (its rootdir rule for packages): `modules`
and `tests.helpers` import from there, with no `sys.path` edit here."""

from __future__ import annotations

import torch

from modules.extensions import EXTENSION_IMPORTS
from tests.helpers.paths import LORA_DIR

torch.set_num_threads(1)
EXTENSION_IMPORTS.offer(LORA_DIR)
