"""Imports every Python module of `modules/` and `extensions-builtin/` in the interpreter that runs it (the user-path
venv, see tests/test_user_path.py), and prints one line per module that fails, with the error. Exit status: the number
of failures (0: every module imports with the runtime packages alone). Run from the repository root as
`python -m tests.user_path_imports`.

Extension folders offer their top-level modules and packages as the extension loader makes them
(`modules.extensions.EXTENSION_IMPORTS`); their `preload.py` and `scripts/*.py` are loaded by file path, as the host
does.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

from modules.extensions import EXTENSION_IMPORTS

ROOT = Path(__file__).resolve().parent.parent


def module_names(root: Path, base: Path) -> list[str]:
    """Dotted names of the .py files under `root` (relative to the import root `base`), skipping scripts/ and
    preload.py (loaded by path)."""
    names = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(base)
        if "scripts" in relative.parts or "__pycache__" in relative.parts or relative.parts == ("preload.py",):
            continue
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def main() -> int:
    failures = 0
    targets: list[tuple[str, Path | None]] = [(name, None) for name in module_names(ROOT / "modules", ROOT)]
    for extension in sorted((ROOT / "extensions-builtin").iterdir()):
        if not extension.is_dir():
            continue
        EXTENSION_IMPORTS.offer(extension)
        targets += [(name, None) for name in module_names(extension, extension)]
        scripts = sorted((extension / "scripts").glob("*.py")) + sorted(extension.glob("preload.py"))
        targets += [(f"ext_{extension.name}_{script.stem}", script) for script in scripts]
    for name, path in targets:
        try:
            if path is None:
                importlib.import_module(name)
            else:
                spec = importlib.util.spec_from_file_location(name, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
        except Exception:
            failures += 1
            print(f"FAILED {name}: {traceback.format_exc(limit=3).strip().splitlines()[-1]}")
    print(f"imported {len(targets) - failures} of {len(targets)} modules")
    return failures


if __name__ == "__main__":
    sys.exit(main())
